//! The memory plan of the activation gradients of a training step: which
//! buffer ("slot") holds d loss / d each node's value during the backward
//! pass, so that gradients never alive at the same time share memory.
//!
//! The backward pass visits the nodes in reverse topological order. The
//! gradient of a value is *born* at the first step that writes it (the graph
//! outputs are seeded before any step; any other value is first written by
//! its latest reader in forward order, since later readers run first) and
//! *dies* once the node's own backward step has read it. Two gradients may
//! share a slot when these intervals do not overlap; the slots are assigned
//! greedily in backward order, best fit among the free slots as in
//! [`super::plan_inference`] (the smallest free slot large enough, else the
//! largest free one, grown, else a new one).
//!
//! On top of that, an op whose input gradient is its output gradient
//! transformed element by element (`Activation`, `Softmax`, `BiasAdd`,
//! `Dropout`: `dx = f(dy)` computed in `dy`'s buffer) hands its slot to its
//! input when it is the step that gives birth to that input's gradient
//! ([`GradientPlan::in_place`]). A chain `conv -> relu -> conv -> relu`
//! therefore needs two gradient buffers, whatever its length.
//!
//! `Flatten` and `Reshape` move no data: their gradient *is* their input's
//! (the readers of either write into the same buffer).
//!
//! The intervals are conservative: a step that does not run in a given pass
//! (a node no seeded output depends on, a frozen part of the network) only
//! shortens the real lifetimes. Which slot holds a node's gradient is fixed;
//! whether a step adds into it or overwrites it (the first write in a pass)
//! is tracked per node by the executor, not per slot.
//!
//! Sizes are in f32 values per example, like [`super::MemoryPlan`].

use crate::graph::ir::{Graph, NodeId, Op};

/// The gradient buffers of a backward pass over a graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GradientPlan {
    /// Per node (indexed like `Graph::nodes`): the slot holding the gradient
    /// of the node's value, `None` where no gradient is ever written. A
    /// `Flatten` / `Reshape` has its input's slot.
    pub slot: Vec<Option<usize>>,
    /// Per node: `true` where the node's gradient is born in place, in the
    /// slot of the reader that writes it first (`dx = f(dy)` in `dy`'s
    /// buffer; see the module docs). Such a node has its reader's slot.
    pub in_place: Vec<bool>,
    /// Size of each slot, in f32 values per example: the largest gradient it holds.
    pub slot_len: Vec<usize>,
    /// Values per example held by all slots together (sum of `slot_len`).
    pub planned_len: usize,
    /// The most gradient values per example alive at any one time (a lower
    /// bound for any plan).
    pub peak_live_len: usize,
    /// Values per example with one gradient buffer per node that receives a
    /// gradient (aliases shared): what a backward pass without reuse holds.
    pub unplanned_len: usize,
}

impl GradientPlan {
    /// Bytes of gradient memory the plan allocates for a batch of `batch`
    /// (f32: 4 bytes per value).
    pub fn planned_bytes(&self, batch: usize) -> usize {
        self.planned_len * batch * 4
    }

    /// Bytes without reuse for a batch of `batch` (`unplanned_len * batch * 4`).
    pub fn unplanned_bytes(&self, batch: usize) -> usize {
        self.unplanned_len * batch * 4
    }

    /// Checks the plan against the lifetimes of `graph`'s gradients for the
    /// given seeds and `needs_grad` (as in [`plan_gradients`]): every node
    /// whose gradient is written has a slot large enough, aliases share their
    /// input's slot, and two gradients share a slot only when their lifetimes
    /// are disjoint or one is born in place from the other. Returns the first
    /// violation, in words.
    pub fn validate(
        &self,
        graph: &Graph,
        seeds: &[NodeId],
        needs_grad: &[bool],
    ) -> Result<(), String> {
        let n = graph.nodes.len();
        if self.slot.len() != n || self.in_place.len() != n {
            return Err(format!("{} slots for {n} nodes", self.slot.len()));
        }
        if needs_grad.len() != n {
            return Err(format!(
                "{} needs_grad flags for {n} nodes",
                needs_grad.len()
            ));
        }
        let life = lifetimes(graph, seeds, needs_grad);
        let len_of = |i: usize| graph.nodes[i].shape.iter().product::<usize>();
        // Per slot: the (node, birth, death) of each gradient it holds.
        let mut held: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); self.slot_len.len()];
        for i in 0..n {
            let s = life.storage[i];
            if s != i {
                if self.slot[i] != self.slot[s] {
                    return Err(format!("alias node {i} does not share node {s}'s slot"));
                }
                continue;
            }
            let Some(birth) = life.birth[i] else {
                continue;
            };
            let Some(slot) = self.slot[i] else {
                return Err(format!("node {i} receives a gradient but has no slot"));
            };
            let Some(&cap) = self.slot_len.get(slot) else {
                return Err(format!("node {i}: slot {slot} does not exist"));
            };
            if cap < len_of(i) {
                return Err(format!(
                    "node {i}: slot {slot} holds {cap} values, needs {}",
                    len_of(i)
                ));
            }
            if self.in_place[i] {
                let ok = birth != SEED
                    && in_place_op(&graph.nodes[birth].op)
                    && graph.nodes[birth].inputs.len() == 1
                    && life.storage[graph.nodes[birth].inputs[0].0] == i
                    && self.slot[birth] == Some(slot)
                    && len_of(birth) == len_of(i);
                if !ok {
                    return Err(format!("node {i} cannot be born in place"));
                }
            }
            held[slot].push((i, birth, life.death[i]));
        }
        for (slot, gs) in held.iter().enumerate() {
            for (a, &(i, bi, di)) in gs.iter().enumerate() {
                for &(j, bj, dj) in &gs[a + 1..] {
                    // Lifetimes are the closed intervals [death, birth] in
                    // forward numbering (the backward pass runs downwards).
                    let disjoint = bi < dj || bj < di;
                    let handed = (self.in_place[i] && bi == dj && bi == j)
                        || (self.in_place[j] && bj == di && bj == i);
                    if !disjoint && !handed {
                        return Err(format!(
                            "the gradients of nodes {i} and {j} are alive together but share slot {slot}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Birth "time" of a seeded gradient: before every backward step.
const SEED: usize = usize::MAX;

/// Ops whose backward computes `dx` from `dy` element by element in `dy`'s
/// buffer (the runtime's activation, bias add and dropout backward).
fn in_place_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation { .. } | Op::Softmax | Op::BiasAdd { .. } | Op::Dropout { .. }
    )
}

/// Whether `op` shares its input's buffer (and so its gradient's).
fn is_alias(op: &Op, inputs: usize) -> bool {
    matches!(op, Op::Flatten | Op::Reshape) && inputs > 0
}

/// The lifetimes of the gradients of a backward pass.
struct Lifetimes {
    /// The node whose buffer holds each node's value and gradient (aliases resolved).
    storage: Vec<usize>,
    /// Per storage node: the step (node index) that first writes its
    /// gradient, [`SEED`] for seeded outputs, `None` if never written.
    birth: Vec<Option<usize>>,
    /// Per storage node: the step that reads its gradient last (the node
    /// itself), or 0 for a gradient no step reads (kept to the end).
    death: Vec<usize>,
    /// Per node: whether its backward step runs (it has a gradient, needs
    /// one, and is not an input or an alias).
    runs: Vec<bool>,
}

fn lifetimes(graph: &Graph, seeds: &[NodeId], needs_grad: &[bool]) -> Lifetimes {
    let n = graph.nodes.len();
    let mut storage: Vec<usize> = (0..n).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        if is_alias(&node.op, node.inputs.len()) && node.inputs[0].0 < i {
            storage[i] = storage[node.inputs[0].0];
        }
    }
    let mut birth: Vec<Option<usize>> = vec![None; n];
    for s in seeds {
        if s.0 < n {
            birth[storage[s.0]] = Some(SEED);
        }
    }
    let needs = |j: usize| needs_grad.get(j).copied().unwrap_or(false);
    let mut runs = vec![false; n];
    for i in (0..n).rev() {
        let node = &graph.nodes[i];
        // An alias's gradient lives in its storage node's buffer, which the
        // storage node's own step reads.
        if storage[i] != i || matches!(node.op, Op::Input) || !needs(i) || birth[i].is_none() {
            continue;
        }
        runs[i] = true;
        for input in &node.inputs {
            let j = input.0;
            if j < i && needs(j) {
                let s = storage[j];
                birth[s] = Some(birth[s].map_or(i, |b| b.max(i)));
            }
        }
    }
    let death = (0..n).map(|i| if runs[i] { i } else { 0 }).collect();
    Lifetimes {
        storage,
        birth,
        death,
        runs,
    }
}

/// The trainable-parameter reach of `graph`: per node, whether a trainable
/// parameter is read at or before it, so a gradient must flow into its
/// value (the runtime executor's rule).
pub fn needs_gradient(graph: &Graph) -> Vec<bool> {
    let mut needs = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let own = node
            .op
            .params()
            .iter()
            .any(|p| graph.params.get(p.0).is_some_and(|p| p.trainable));
        needs[i] = own || node.inputs.iter().any(|j| j.0 < i && needs[j.0]);
    }
    needs
}

/// Best fit among the free slots for a gradient of `need` values per example
/// (the smallest free slot large enough, else the largest free one, grown),
/// else a new slot.
fn take_slot(
    need: usize,
    slot_len: &mut Vec<usize>,
    in_use: &mut Vec<usize>,
    free: &mut Vec<usize>,
) -> usize {
    let best = free
        .iter()
        .enumerate()
        .filter(|(_, &s)| slot_len[s] >= need)
        .min_by_key(|(_, &s)| slot_len[s])
        .or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| slot_len[s]))
        .map(|(k, _)| k);
    let s = match best {
        Some(k) => free.swap_remove(k),
        None => {
            slot_len.push(0);
            in_use.push(0);
            slot_len.len() - 1
        }
    };
    slot_len[s] = slot_len[s].max(need);
    in_use[s] = need;
    s
}

/// Plans the gradient buffers of a backward pass over `graph` seeded at
/// `seeds` (the outputs whose gradients the loss gives), where `needs_grad`
/// marks the nodes a gradient must flow into (see [`needs_gradient`]).
/// Linear in the nodes and edges, plus the free-slot search.
pub fn plan_gradients(graph: &Graph, seeds: &[NodeId], needs_grad: &[bool]) -> GradientPlan {
    let n = graph.nodes.len();
    let life = lifetimes(graph, seeds, needs_grad);
    let len_of = |i: usize| graph.nodes[i].shape.iter().product::<usize>();
    let mut slot: Vec<Option<usize>> = vec![None; n];
    let mut in_place = vec![false; n];
    let mut slot_len: Vec<usize> = Vec::new();
    // Per slot: values per example of the gradient it holds now (0: free).
    let mut in_use: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let (mut live_len, mut peak_live_len, mut unplanned_len) = (0usize, 0usize, 0usize);

    // Seeds first (before any step), in node order.
    for (i, s) in slot.iter_mut().enumerate() {
        if life.birth[i] == Some(SEED) {
            let need = len_of(i);
            *s = Some(take_slot(need, &mut slot_len, &mut in_use, &mut free));
            live_len += need;
            unplanned_len += need;
        }
    }
    peak_live_len = peak_live_len.max(live_len);
    for i in (0..n).rev() {
        if !life.runs[i] {
            continue;
        }
        let Some(own) = slot[i] else {
            continue; // unreachable: a running step has a gradient
        };
        let node = &graph.nodes[i];
        let mut handed = false;
        let mut born: Vec<usize> = node
            .inputs
            .iter()
            .map(|j| life.storage[j.0])
            .filter(|&s| s < i && life.birth[s] == Some(i))
            .collect();
        born.sort_unstable();
        born.dedup();
        for s in born {
            let need = len_of(s);
            unplanned_len += need;
            if in_place_op(&node.op) && node.inputs.len() == 1 && need == len_of(i) && !handed {
                slot[s] = Some(own);
                in_place[s] = true;
                handed = true;
                in_use[own] = need;
                continue;
            }
            slot[s] = Some(take_slot(need, &mut slot_len, &mut in_use, &mut free));
            live_len += need;
        }
        peak_live_len = peak_live_len.max(live_len);
        if !handed {
            // This step has read its gradient: the slot is free.
            live_len -= in_use[own];
            in_use[own] = 0;
            free.push(own);
        }
    }
    for i in 0..n {
        if life.storage[i] != i {
            slot[i] = slot[life.storage[i]];
        }
    }
    let planned_len = slot_len.iter().sum();
    GradientPlan {
        slot,
        in_place,
        slot_len,
        planned_len,
        peak_live_len,
        unplanned_len,
    }
}

/// A backward pass without reuse, as a plan: one slot per node that receives
/// a gradient (aliases share their input's). The reference the planned
/// executor is checked against.
pub fn plan_gradients_without_reuse(
    graph: &Graph,
    seeds: &[NodeId],
    needs_grad: &[bool],
) -> GradientPlan {
    let n = graph.nodes.len();
    let life = lifetimes(graph, seeds, needs_grad);
    let mut slot: Vec<Option<usize>> = vec![None; n];
    let mut slot_len = Vec::new();
    for (i, s) in slot.iter_mut().enumerate() {
        if life.storage[i] == i && life.birth[i].is_some() {
            *s = Some(slot_len.len());
            slot_len.push(graph.nodes[i].shape.iter().product::<usize>());
        }
    }
    for i in 0..n {
        if life.storage[i] != i {
            slot[i] = slot[life.storage[i]];
        }
    }
    let total: usize = slot_len.iter().sum();
    GradientPlan {
        slot,
        in_place: vec![false; n],
        slot_len,
        planned_len: total,
        peak_live_len: plan_gradients(graph, seeds, needs_grad).peak_live_len,
        unplanned_len: total,
    }
}

/// The gradient plan of a training step of `graph`: seeded at the graph's
/// outputs, with gradients flowing into every node at or after a trainable
/// parameter ([`needs_gradient`]).
pub fn plan_training_gradients(graph: &Graph) -> GradientPlan {
    plan_gradients(graph, &graph.output_ids(), &needs_gradient(graph))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ir::ParamId;
    use crate::graph::memory::tests::{graph, node};
    use crate::model::{Activation, Pads2d};

    /// Zero padding by nothing: shape-preserving, but not element-wise, so
    /// its input gradient needs a buffer of its own.
    fn pad() -> Op {
        Op::ZeroPadding2d {
            pads: Pads2d {
                top: 0,
                bottom: 0,
                left: 0,
                right: 0,
            },
        }
    }

    const RELU: Op = Op::Activation {
        activation: Activation::Relu,
    };

    /// Every node but the input needs a gradient.
    /// 0 input [1, 1, 4] -> 1 pad -> 2 pad -> 3 pad -> 4 add(1, 3), the
    /// output, or with `relu` -> 5 relu, the output.
    fn residual(relu: bool) -> Graph {
        let s = [1, 1, 4];
        let mut nodes = vec![
            node(Op::Input, &[], &s),
            node(pad(), &[0], &s),
            node(pad(), &[1], &s),
            node(pad(), &[2], &s),
            node(Op::Add, &[1, 3], &s),
        ];
        if relu {
            nodes.push(node(RELU, &[4], &s));
        }
        let output = nodes.len() - 1;
        graph(nodes, output)
    }

    fn all_but_input(n: usize) -> Vec<bool> {
        (0..n).map(|i| i != 0).collect()
    }

    #[test]
    fn a_chain_ping_pongs_between_two_gradient_slots() {
        // 0 input -> 1 pad -> 2 pad -> 3 pad -> 4 pad (output), 8 values
        // each. Backward: seed d4 (slot 0); step 4 writes d3 while reading
        // d4 (slot 1), then d4 dies; step 3 writes d2 into slot 0; step 2
        // writes d1 into slot 1; step 1 writes nothing (the input needs no
        // gradient).
        let g = graph(
            vec![
                node(Op::Input, &[], &[2, 2, 2]),
                node(pad(), &[0], &[2, 2, 2]),
                node(pad(), &[1], &[2, 2, 2]),
                node(pad(), &[2], &[2, 2, 2]),
                node(pad(), &[3], &[2, 2, 2]),
            ],
            4,
        );
        let needs = all_but_input(5);
        let plan = plan_gradients(&g, &[NodeId(4)], &needs);
        plan.validate(&g, &[NodeId(4)], &needs).unwrap();
        assert_eq!(plan.slot, vec![None, Some(1), Some(0), Some(1), Some(0)]);
        assert_eq!(plan.slot_len, vec![8, 8]);
        assert_eq!(plan.planned_len, 16);
        assert_eq!(plan.peak_live_len, 16);
        // Without reuse: nodes 1..=4, 8 values each.
        assert_eq!(plan.unplanned_len, 32);
        assert_eq!(plan.planned_bytes(3), 16 * 3 * 4);
        let reference = plan_gradients_without_reuse(&g, &[NodeId(4)], &needs);
        reference.validate(&g, &[NodeId(4)], &needs).unwrap();
        assert_eq!(reference.planned_len, 32);
        assert_eq!(reference.slot_len.len(), 4);
    }

    #[test]
    fn element_wise_backward_steps_hand_their_slot_to_the_input() {
        // 0 input -> 1 pad -> 2 relu -> 3 pad -> 4 relu (output).
        // d4 seeded in slot 0; relu 4 turns d4 into d3 in place (slot 0);
        // step 3 writes d2 into slot 1, frees slot 0; relu 2 turns d2 into
        // d1 in place (slot 1).
        let g = graph(
            vec![
                node(Op::Input, &[], &[2, 2, 2]),
                node(pad(), &[0], &[2, 2, 2]),
                node(RELU, &[1], &[2, 2, 2]),
                node(pad(), &[2], &[2, 2, 2]),
                node(RELU, &[3], &[2, 2, 2]),
            ],
            4,
        );
        let needs = all_but_input(5);
        let plan = plan_gradients(&g, &[NodeId(4)], &needs);
        plan.validate(&g, &[NodeId(4)], &needs).unwrap();
        assert_eq!(plan.slot, vec![None, Some(1), Some(1), Some(0), Some(0)]);
        assert_eq!(plan.in_place, vec![false, true, false, true, false]);
        assert_eq!(plan.planned_len, 16);
        assert_eq!(plan.unplanned_len, 32);
    }

    #[test]
    fn a_residual_add_keeps_the_skip_gradient_alive() {
        // 0 input [4] -> 1 pad -> 2 pad -> 3 pad -> 4 add(1, 3) -> 5 relu (output).
        // Lifetimes (forward numbering, [death, birth]): d5 [5, seed],
        // d4 [4, 5] (born in place by the relu), d3 [3, 4], d1 [1, 4] (its
        // latest reader is the add; step 2 adds into it), d2 [2, 3].
        // At step 4, d4, d1 and d3 are alive together: three slots of 4.
        let g = residual(true);
        let needs = all_but_input(6);
        let seeds = [NodeId(5)];
        let plan = plan_gradients(&g, &seeds, &needs);
        plan.validate(&g, &seeds, &needs).unwrap();
        assert_eq!(plan.slot[5], Some(0));
        assert_eq!(plan.slot[4], Some(0));
        assert!(plan.in_place[4]);
        // d2 reuses the add's slot (free after step 4), not d1's.
        assert_eq!(plan.slot[2], plan.slot[4]);
        assert_ne!(plan.slot[1], plan.slot[3]);
        assert_ne!(plan.slot[1], plan.slot[2]);
        assert_eq!(plan.slot_len, vec![4, 4, 4]);
        assert_eq!(plan.planned_len, 12);
        assert_eq!(plan.peak_live_len, 12);
        assert_eq!(plan.unplanned_len, 5 * 4);
        assert_eq!(plan.planned_bytes(2), 12 * 2 * 4);
    }

    #[test]
    fn aliases_share_the_gradient_and_frozen_nodes_get_none() {
        // 0 input [2,2,1] -> 1 pad (frozen: needs no gradient) -> 2 bias_add
        // (trainable) -> 3 flatten -> 4 relu (output).
        let g = graph(
            vec![
                node(Op::Input, &[], &[2, 2, 1]),
                node(pad(), &[0], &[2, 2, 1]),
                node(Op::BiasAdd { bias: ParamId(0) }, &[1], &[2, 2, 1]),
                node(Op::Flatten, &[2], &[4]),
                node(RELU, &[3], &[4]),
            ],
            4,
        );
        let needs = needs_gradient(&g);
        assert_eq!(needs, vec![false, false, true, true, true]);
        let plan = plan_training_gradients(&g);
        plan.validate(&g, &[NodeId(4)], &needs).unwrap();
        // d4 seeded in slot 0; the relu writes d3 = d2 (flatten aliases
        // node 2) in place; the bias add delivers nothing to the frozen pad.
        assert_eq!(plan.slot, vec![None, None, Some(0), Some(0), Some(0)]);
        assert_eq!(plan.in_place, vec![false, false, true, false, false]);
        assert_eq!(plan.planned_len, 4);
        assert_eq!(plan.unplanned_len, 8);
    }

    #[test]
    fn validate_catches_shared_live_gradients() {
        let g = residual(false);
        let needs = all_but_input(5);
        let seeds = [NodeId(4)];
        let mut plan = plan_gradients(&g, &seeds, &needs);
        plan.validate(&g, &seeds, &needs).unwrap();
        // d1 is alive from step 4 to step 1, as is d3 at step 4.
        plan.slot[3] = plan.slot[1];
        assert!(plan.validate(&g, &seeds, &needs).is_err());
        let mut plan = plan_gradients(&g, &seeds, &needs);
        // The add's own gradient is read while d3 is written.
        plan.slot[3] = plan.slot[4];
        plan.in_place[3] = true;
        assert!(plan.validate(&g, &seeds, &needs).is_err());
    }
}
