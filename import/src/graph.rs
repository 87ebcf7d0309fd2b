//! The decoded ONNX graph in the form the op mapping reads: initializers
//! decoded, the real inputs (graph inputs that are not initializers) with
//! their shapes, the outputs, the standard opset version, and for each node
//! a display name and typed attribute access.

use crate::error::ImportError;
use crate::proto::{self, AttributeProto, DimensionValue, ModelProto, NodeProto, ValueInfoProto};
use crate::tensor::{self, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A graph input's dimension: a size, or symbolic / unknown (`dim_param`
/// such as the batch `N`, or nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Known(usize),
    Symbolic,
}

/// A real input of the graph.
#[derive(Debug, Clone)]
pub struct GraphInput {
    pub name: String,
    /// ONNX element type code (1 = FLOAT).
    pub elem_type: i32,
    pub dims: Vec<Dim>,
}

/// The ONNX model, ready for mapping.
#[derive(Debug)]
pub struct Graph<'a> {
    pub model: &'a ModelProto,
    pub name: String,
    /// Version of the default (`ai.onnx`) operator set.
    pub opset: i64,
    /// Initializers by name.
    pub initializers: HashMap<String, Tensor>,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<String>,
    pub nodes: Vec<Node<'a>>,
}

impl<'a> Graph<'a> {
    /// Decodes the initializers and collects inputs, outputs and nodes.
    /// `base_dir` is the folder of the model file (for external data).
    pub fn new(model: &'a ModelProto, base_dir: Option<&Path>) -> Result<Graph<'a>, ImportError> {
        let graph = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            // IR version 3 models without opset_import use opset 1; real ones declare it.
            .unwrap_or(1);
        let mut initializers = HashMap::new();
        for init in &graph.initializer {
            initializers.insert(init.name.clone(), tensor::decode(init, base_dir)?);
        }
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains_key(&i.name))
            .map(graph_input)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        let nodes = graph
            .node
            .iter()
            .enumerate()
            .map(|(index, proto)| Node { proto, index })
            .collect();
        Ok(Graph {
            model,
            name: graph.name.clone(),
            opset,
            initializers,
            inputs,
            outputs,
            nodes,
        })
    }

    /// How many node inputs (and graph outputs) read each tensor name.
    pub fn consumer_counts(&self) -> HashMap<&'a str, usize> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        if let Some(graph) = self.model.graph.as_ref() {
            for node in &graph.node {
                for input in node.input.iter().filter(|i| !i.is_empty()) {
                    *counts.entry(input.as_str()).or_default() += 1;
                }
            }
            for output in &graph.output {
                *counts.entry(output.name.as_str()).or_default() += 1;
            }
        }
        counts
    }
}

fn graph_input(info: &ValueInfoProto) -> Result<GraphInput, ImportError> {
    let tensor_type = info
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| ImportError::Input {
            name: info.name.clone(),
            reason: "not a tensor input".into(),
        })?;
    let dims = tensor_type
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimensionValue::DimValue(v)) if *v > 0 => Dim::Known(*v as usize),
                    _ => Dim::Symbolic,
                })
                .collect()
        })
        .ok_or_else(|| ImportError::Input {
            name: info.name.clone(),
            reason: "the model does not give its shape".into(),
        })?;
    Ok(GraphInput {
        name: info.name.clone(),
        elem_type: tensor_type.elem_type,
        dims,
    })
}

/// One node of the graph.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub proto: &'a NodeProto,
    /// Position in the graph's node list.
    pub index: usize,
}

impl<'a> Node<'a> {
    pub fn op_type(&self) -> &'a str {
        &self.proto.op_type
    }

    /// The node's name, or for an unnamed node its first output (what
    /// error messages show).
    pub fn display_name(&self) -> String {
        if !self.proto.name.is_empty() {
            self.proto.name.clone()
        } else if let Some(out) = self.proto.output.first().filter(|o| !o.is_empty()) {
            format!("{} (unnamed, output `{out}`)", self.proto.op_type)
        } else {
            format!("#{} (unnamed)", self.index)
        }
    }

    /// The `i`-th input name, if present and not empty (an omitted optional input).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }

    /// An INT attribute.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).map(|a| a.i)
    }

    /// A FLOAT attribute.
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).map(|a| a.f)
    }

    /// An INTS attribute.
    pub fn attr_ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    /// A FLOATS attribute.
    pub fn attr_floats(&self, name: &str) -> Option<&'a [f32]> {
        self.attr(name).map(|a| a.floats.as_slice())
    }

    /// A STRING attribute, as text.
    pub fn attr_string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// A TENSOR attribute.
    pub fn attr_tensor(&self, name: &str) -> Option<&'a proto::TensorProto> {
        self.attr(name).and_then(|a| a.t.as_ref())
    }

    /// An error about this node: the use cannot be expressed in cnnc.
    pub fn unsupported(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            op_type: self.proto.op_type.clone(),
            node: self.display_name(),
            reason: reason.into(),
        }
    }

    /// An error about this node: it is malformed.
    pub fn invalid(&self, reason: impl Into<String>) -> ImportError {
        ImportError::InvalidNode {
            op_type: self.proto.op_type.clone(),
            node: self.display_name(),
            reason: reason.into(),
        }
    }
}
