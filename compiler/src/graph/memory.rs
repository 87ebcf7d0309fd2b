//! The memory plan of an inference pass: which buffer ("slot") holds each
//! node's output, so that values never live at the same time share memory.
//!
//! Liveness-based buffer reuse, as in TensorFlow Lite's
//! `ArenaPlanner` / ONNX Runtime's memory pattern planner: walking the nodes
//! in topological order, a node's output takes a free slot (the smallest one
//! large enough, else the largest, grown), and a slot is freed once the last
//! reader of every value in it has run. On top of that:
//!
//! - `Flatten` and `Reshape` move no data: their output *is* their input's
//!   slot ([`Placement::Alias`]);
//! - an element-wise op whose input dies at that op overwrites it
//!   ([`Placement::InPlace`]): `Activation`, `BiasAdd`, `BatchNorm`,
//!   `Softmax`, `Dropout` (input 0), and `Add` / `Multiply` (the first input
//!   that dies there);
//! - graph outputs are never freed or overwritten.
//!
//! Sizes are in f32 values per example; a batch of `n` needs `n` times as
//! many (every op's buffer scales with the batch).

use super::ir::{Graph, Op};

pub mod training;
pub use training::{
    needs_gradient, plan_gradients, plan_gradients_without_reuse, plan_training_gradients,
    GradientPlan,
};

/// Where one node's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Not computed: no graph output depends on the node.
    Skipped,
    /// A slot of its own (possibly reused from values that died earlier).
    Slot { slot: usize },
    /// The same buffer as input `input` (an index into the node's inputs),
    /// unchanged (`Flatten`, `Reshape`).
    Alias { slot: usize, input: usize },
    /// Computed in place over input `input`, which no later node reads.
    InPlace { slot: usize, input: usize },
}

impl Placement {
    /// The slot holding the node's output, if it is computed.
    pub fn slot(&self) -> Option<usize> {
        match *self {
            Placement::Skipped => None,
            Placement::Slot { slot }
            | Placement::Alias { slot, .. }
            | Placement::InPlace { slot, .. } => Some(slot),
        }
    }
}

/// The buffer assignment of an inference pass over a graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// Per node (indexed like `Graph::nodes`).
    pub placement: Vec<Placement>,
    /// Size of each slot, in f32 values per example: the largest value it holds.
    pub slot_len: Vec<usize>,
    /// Values per example held by all slots together: the activation memory
    /// the plan allocates (sum of `slot_len`).
    pub planned_len: usize,
    /// The most values per example alive at any one time (a lower bound for
    /// any plan; `planned_len` exceeds it only by fragmentation).
    pub peak_live_len: usize,
    /// Values per example with one buffer per computed node, aliases shared
    /// (what running without a plan allocates).
    pub unplanned_len: usize,
}

impl MemoryPlan {
    /// Bytes of activation memory the plan allocates for a batch of `batch`
    /// (f32: 4 bytes per value).
    pub fn planned_bytes(&self, batch: usize) -> usize {
        self.planned_len * batch * 4
    }
}

impl MemoryPlan {
    /// Checks the plan against `graph` by replaying it: every computed node's
    /// slot is large enough, a node never writes into a buffer holding a value
    /// that it or a later node still reads (except the one input an in-place
    /// op overwrites, which nothing reads afterwards), aliases share their
    /// input's buffer, and every graph output is computed and intact at the
    /// end. Returns the first violation, in words.
    pub fn validate(&self, graph: &Graph) -> Result<(), String> {
        let n = graph.nodes.len();
        if self.placement.len() != n {
            return Err(format!("{} placements for {n} nodes", self.placement.len()));
        }
        let outputs = graph.output_ids();
        let mut last_read = vec![None; n];
        for (i, node) in graph.nodes.iter().enumerate() {
            if self.placement[i] == Placement::Skipped {
                continue;
            }
            for input in &node.inputs {
                if self.placement.get(input.0) == Some(&Placement::Skipped) {
                    return Err(format!("node {i} reads skipped node {}", input.0));
                }
                last_read[input.0] = Some(i);
            }
        }
        for o in &outputs {
            last_read[o.0] = Some(usize::MAX);
        }
        // The values each slot holds right now.
        let mut held: Vec<Vec<usize>> = vec![Vec::new(); self.slot_len.len()];
        let still_needed = |v: usize, at: usize| last_read[v].is_some_and(|r| r >= at);
        for (i, node) in graph.nodes.iter().enumerate() {
            let len: usize = node.shape.iter().product();
            let place = self.placement[i];
            let Some(slot) = place.slot() else {
                continue;
            };
            let Some(&cap) = self.slot_len.get(slot) else {
                return Err(format!("node {i}: slot {slot} does not exist"));
            };
            if cap < len {
                return Err(format!(
                    "node {i}: slot {slot} holds {cap} values, needs {len}"
                ));
            }
            match place {
                Placement::Skipped => {}
                Placement::Slot { .. } => {
                    if let Some(&v) = held[slot].iter().find(|&&v| still_needed(v, i)) {
                        return Err(format!("node {i} overwrites node {v}, which is read later"));
                    }
                    held[slot] = vec![i];
                }
                Placement::InPlace { input, .. } | Placement::Alias { input, .. } => {
                    let Some(j) = node.inputs.get(input).map(|x| x.0) else {
                        return Err(format!("node {i}: no input {input}"));
                    };
                    if self.placement[j].slot() != Some(slot) {
                        return Err(format!(
                            "node {i} shares slot {slot} with node {j}, which is not there"
                        ));
                    }
                    if matches!(place, Placement::InPlace { .. }) {
                        if node.inputs.iter().filter(|x| x.0 == j).count() != 1 {
                            return Err(format!(
                                "node {i} overwrites node {j}, which it reads twice"
                            ));
                        }
                        if let Some(&v) = held[slot].iter().find(|&&v| still_needed(v, i + 1)) {
                            return Err(format!(
                                "node {i} overwrites node {v}, which is read later"
                            ));
                        }
                        held[slot] = vec![i];
                    } else {
                        held[slot].push(i);
                    }
                }
            }
        }
        for o in &outputs {
            let Some(slot) = self.placement[o.0].slot() else {
                return Err(format!("output node {} is not computed", o.0));
            };
            if !held[slot].contains(&o.0) {
                return Err(format!("output node {} was overwritten", o.0));
            }
        }
        Ok(())
    }
}

/// Whether `op` may overwrite its input `index`: element-wise ops whose
/// output has the input's shape and whose kernels read each value before
/// writing it.
fn may_overwrite(op: &Op, index: usize) -> bool {
    match op {
        Op::Activation { .. }
        | Op::BiasAdd { .. }
        | Op::BatchNorm { .. }
        | Op::Softmax
        | Op::Dropout { .. } => index == 0,
        Op::Add | Op::Multiply => true,
        _ => false,
    }
}

/// Plans the buffers of an inference pass over `graph` (see the module docs).
/// Linear in the number of nodes and edges, plus the free-slot search
/// (linear in the number of free slots).
pub fn plan_inference(graph: &Graph) -> MemoryPlan {
    let n = graph.nodes.len();
    let outputs = graph.output_ids();
    // Which nodes run: the ones the outputs depend on.
    let mut live = vec![false; n];
    for o in &outputs {
        if o.0 < n {
            live[o.0] = true;
        }
    }
    for i in (0..n).rev() {
        if live[i] {
            for input in &graph.nodes[i].inputs {
                if input.0 < n {
                    live[input.0] = true;
                }
            }
        }
    }
    // The last node reading each value (usize::MAX for graph outputs).
    let mut last_read: Vec<Option<usize>> = vec![None; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        for input in &node.inputs {
            if input.0 < n {
                last_read[input.0] = Some(i);
            }
        }
    }
    for o in &outputs {
        if o.0 < n {
            last_read[o.0] = Some(usize::MAX);
        }
    }

    let len_of = |i: usize| graph.nodes[i].shape.iter().product::<usize>();
    let mut placement = vec![Placement::Skipped; n];
    let mut slot_len: Vec<usize> = Vec::new();
    // Values currently held by each slot (a slot is free at 0), and the
    // length of the value that took it (aliases and in-place ops that follow
    // share that buffer).
    let mut holders: Vec<usize> = Vec::new();
    let mut in_use: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let (mut live_len, mut peak_live_len, mut unplanned_len) = (0usize, 0usize, 0usize);

    for (i, node) in graph.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let need = len_of(i);
        let dies_here = |j: usize| last_read[j] == Some(i);
        let reads_once = |j: usize| node.inputs.iter().filter(|x| x.0 == j).count() == 1;
        let place = if matches!(node.op, Op::Flatten | Op::Reshape) && !node.inputs.is_empty() {
            let slot = placement[node.inputs[0].0].slot();
            slot.map(|slot| Placement::Alias { slot, input: 0 })
        } else {
            node.inputs
                .iter()
                .enumerate()
                .find(|&(k, input)| {
                    let j = input.0;
                    may_overwrite(&node.op, k)
                        && dies_here(j)
                        && reads_once(j)
                        && len_of(j) == need
                        && placement[j].slot().is_some_and(|s| holders[s] == 1)
                })
                .and_then(|(k, input)| {
                    placement[input.0]
                        .slot()
                        .map(|slot| Placement::InPlace { slot, input: k })
                })
        };
        let place = place.unwrap_or_else(|| {
            // Best fit among the free slots, else grow the largest, else a new one.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, &s)| slot_len[s] >= need)
                .min_by_key(|(_, &s)| slot_len[s])
                .or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| slot_len[s]))
                .map(|(k, _)| k);
            let slot = match best {
                Some(k) => free.swap_remove(k),
                None => {
                    slot_len.push(0);
                    holders.push(0);
                    in_use.push(0);
                    slot_len.len() - 1
                }
            };
            slot_len[slot] = slot_len[slot].max(need);
            in_use[slot] = need;
            live_len += need;
            Placement::Slot { slot }
        });
        placement[i] = place;
        if !matches!(place, Placement::Alias { .. }) {
            unplanned_len += need;
        }
        if let Some(slot) = place.slot() {
            holders[slot] += 1;
        }
        peak_live_len = peak_live_len.max(live_len);

        // Values whose last reader was this node die now; so does this
        // node's own value if nothing reads it.
        let mut dying: Vec<usize> = node
            .inputs
            .iter()
            .map(|x| x.0)
            .filter(|&j| j < n && dies_here(j))
            .collect();
        dying.sort_unstable();
        dying.dedup();
        if last_read[i].is_none() {
            dying.push(i);
        }
        for j in dying {
            let Some(slot) = placement[j].slot() else {
                continue;
            };
            holders[slot] -= 1;
            if holders[slot] == 0 {
                free.push(slot);
                live_len -= in_use[slot];
            }
        }
    }
    let planned_len = slot_len.iter().sum();
    MemoryPlan {
        placement,
        slot_len,
        planned_len,
        peak_live_len,
        unplanned_len,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::ir::{Init, Node, NodeId, Param, ParamId};
    use crate::model::Activation;

    /// A node of `op` reading `inputs`, with per-example output `shape`
    /// (also used by the training plan's tests).
    pub(crate) fn node(op: Op, inputs: &[usize], shape: &[usize]) -> Node {
        Node {
            op,
            inputs: inputs.iter().map(|&i| NodeId(i)).collect(),
            shape: shape.to_vec(),
            layer: String::new(),
            fused: vec![],
            rule: None,
        }
    }

    /// A graph of `nodes` (input node 0) with one output and one trainable
    /// 4-value parameter `b`.
    pub(crate) fn graph(nodes: Vec<Node>, output: usize) -> Graph {
        Graph {
            name: "g".into(),
            nodes,
            input: NodeId(0),
            output: NodeId(output),
            params: vec![Param {
                name: "b".into(),
                shape: vec![4],
                init: Init::Zeros,
                trainable: true,
            }],
            inputs: vec![],
            outputs: vec![],
        }
    }

    const RELU: Op = Op::Activation {
        activation: Activation::Relu,
    };

    #[test]
    fn a_chain_ping_pongs_between_two_slots() {
        // A chain of ops that need a fresh buffer each (zero padding is not
        // element-wise): live values alternate between two slots.
        let pad = Op::ZeroPadding2d {
            pads: crate::model::Pads2d {
                top: 0,
                bottom: 0,
                left: 0,
                right: 0,
            },
        };
        let g = graph(
            vec![
                node(Op::Input, &[], &[2, 2, 2]),
                node(pad.clone(), &[0], &[2, 2, 2]),
                node(pad.clone(), &[1], &[2, 2, 2]),
                node(pad.clone(), &[2], &[2, 2, 2]),
                node(pad, &[3], &[2, 2, 2]),
            ],
            4,
        );
        let plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        let slots: Vec<_> = plan.placement.iter().map(|p| p.slot().unwrap()).collect();
        assert_eq!(slots, vec![0, 1, 0, 1, 0]);
        assert_eq!(plan.slot_len, vec![8, 8]);
        assert_eq!(plan.planned_len, 16);
        assert_eq!(plan.peak_live_len, 16);
        assert_eq!(plan.unplanned_len, 40);
    }

    #[test]
    fn element_wise_ops_overwrite_a_dying_input_but_not_a_shared_one() {
        // 0 input [4] -> 1 bias_add -> 2 relu (reads 1, which 3 reads too)
        // -> 3 add(1, 2) -> output.
        let g = graph(
            vec![
                node(Op::Input, &[], &[4]),
                node(Op::BiasAdd { bias: ParamId(0) }, &[0], &[4]),
                node(RELU, &[1], &[4]),
                node(Op::Add, &[1, 2], &[4]),
            ],
            3,
        );
        let plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        // bias_add overwrites the input (read only by it).
        assert_eq!(plan.placement[1], Placement::InPlace { slot: 0, input: 0 });
        // relu may not overwrite node 1: the add still reads it.
        assert_eq!(plan.placement[2], Placement::Slot { slot: 1 });
        // the add overwrites its first input, which dies there.
        assert_eq!(plan.placement[3], Placement::InPlace { slot: 0, input: 0 });
        assert_eq!(plan.planned_len, 8);
        assert_eq!(plan.peak_live_len, 8);
        // Without a plan: one buffer for each of the four values.
        assert_eq!(plan.unplanned_len, 16);
    }

    #[test]
    fn flatten_aliases_and_keeps_the_slot_alive() {
        // 0 input [2,2,1] -> 1 flatten -> 2 relu(1) -> output 2 and 1.
        let mut g = graph(
            vec![
                node(Op::Input, &[], &[2, 2, 1]),
                node(Op::Flatten, &[0], &[4]),
                node(RELU, &[1], &[4]),
            ],
            2,
        );
        g.outputs = vec![NodeId(2), NodeId(1)];
        let plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        assert_eq!(plan.placement[1], Placement::Alias { slot: 0, input: 0 });
        // node 1 is an output: relu must not overwrite it.
        assert_eq!(plan.placement[2], Placement::Slot { slot: 1 });
    }

    #[test]
    fn nodes_no_output_needs_are_skipped() {
        let g = graph(
            vec![
                node(Op::Input, &[], &[4]),
                node(RELU, &[0], &[4]),
                node(Op::Softmax, &[0], &[4]),
            ],
            2,
        );
        let plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        assert_eq!(plan.placement[1], Placement::Skipped);
        assert_eq!(plan.placement[2], Placement::InPlace { slot: 0, input: 0 });
        assert_eq!(plan.planned_len, 4);
    }

    #[test]
    fn validate_catches_an_overwritten_live_value() {
        let g = graph(
            vec![
                node(Op::Input, &[], &[4]),
                node(RELU, &[0], &[4]),
                node(Op::Add, &[0, 1], &[4]),
            ],
            2,
        );
        let mut plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        // The relu may not take the input's slot: the add reads the input.
        plan.placement[1] = Placement::Slot { slot: 0 };
        assert_eq!(
            plan.validate(&g),
            Err("node 1 overwrites node 0, which is read later".into())
        );
        plan.placement[1] = Placement::InPlace { slot: 0, input: 0 };
        assert_eq!(
            plan.validate(&g),
            Err("node 1 overwrites node 0, which is read later".into())
        );
    }

    #[test]
    fn a_freed_small_slot_is_grown_rather_than_a_new_one_made() {
        // 0 input [2] -> 1 pad to [4] (new slot) -> input dies -> 2 pad to [8]
        // takes slot 0 (the input's, grown to 8) -> output.
        let pad = |p: usize| Op::ZeroPadding2d {
            pads: crate::model::Pads2d {
                top: 0,
                bottom: 0,
                left: 0,
                right: p,
            },
        };
        let g = graph(
            vec![
                node(Op::Input, &[], &[1, 2, 1]),
                node(pad(2), &[0], &[1, 4, 1]),
                node(pad(4), &[1], &[1, 8, 1]),
            ],
            2,
        );
        let plan = plan_inference(&g);
        plan.validate(&g).unwrap();
        assert_eq!(plan.placement[2], Placement::Slot { slot: 0 });
        assert_eq!(plan.slot_len, vec![8, 4]);
        // At node 2: node 1 (4) and node 2 (8) are live; the input died.
        assert_eq!(plan.peak_live_len, 12);
    }
}
