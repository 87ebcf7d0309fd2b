//! `cnnc bench --profile`: where a step's time goes, node by node.
//!
//! After the timed steps, the same steps run again with the executor's
//! per-node timing on ([`Executor::set_profiling`]); each node's forward and
//! backward wall times are summed over those steps and reported as the mean
//! per step, in milliseconds, with the node's share of the time spent in
//! nodes (the loss and the optimizer step are outside it). Nodes that did no
//! work (a `flatten` that aliases its input, a softmax folded into the loss)
//! are left out. Timing adds two clock reads per node and pass, so the
//! profiled steps are not the ones whose throughput `cnnc bench` reports.

use cnnc_compiler::graph::Graph;
use cnnc_runtime::executor::NodeTime;
use serde::Serialize;

/// One node's mean time per step (`--format json`: the `profile` list).
#[derive(Debug, Clone, Serialize)]
pub struct NodeProfile {
    /// Index in the (optimized) op graph, as `cnnc build --emit graph` numbers it.
    pub node: usize,
    /// The op (`fused_conv2d`, `max_pool2d`, ...).
    pub op: &'static str,
    /// The spec layer the node came from.
    pub layer: String,
    /// Per-example output shape, NHWC without the batch.
    pub shape: Vec<usize>,
    /// Mean forward wall time per step, milliseconds.
    pub forward_ms: f64,
    /// Mean backward wall time per step, milliseconds (0 for inference).
    pub backward_ms: f64,
}

/// Sums per-node times over the profiled steps.
pub struct Profile {
    rows: Vec<NodeProfile>,
    steps: usize,
}

impl Profile {
    /// An empty profile with one row per node of `graph`.
    pub fn new(graph: &Graph) -> Profile {
        let rows = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeProfile {
                node: i,
                op: n.op.name(),
                layer: n.layer.clone(),
                shape: n.shape.clone(),
                forward_ms: 0.0,
                backward_ms: 0.0,
            })
            .collect();
        Profile { rows, steps: 0 }
    }

    /// Adds one step's times (the executor's [`NodeTime`]s, seconds).
    pub fn add_step(&mut self, times: &[NodeTime]) {
        for t in times {
            if let Some(row) = self.rows.get_mut(t.node.0) {
                row.forward_ms += t.forward_s * 1e3;
                row.backward_ms += t.backward_s * 1e3;
            }
        }
        self.steps += 1;
    }

    /// Steps added so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Mean per-step times of the nodes that took any time, in graph order.
    pub fn rows(&self) -> Vec<NodeProfile> {
        let n = self.steps.max(1) as f64;
        self.rows
            .iter()
            .filter(|r| r.forward_ms + r.backward_ms > 0.0)
            .map(|r| NodeProfile {
                forward_ms: r.forward_ms / n,
                backward_ms: r.backward_ms / n,
                ..r.clone()
            })
            .collect()
    }
}

/// The profile as a table for people: one line per node, then the total
/// and, given the mean wall time of a whole profiled step (`step_ms`), the
/// time outside the nodes (the loss and optimizer step of training, and
/// whatever runs between nodes).
pub fn render(rows: &[NodeProfile], steps: usize, step_ms: Option<f64>) -> String {
    let total: f64 = rows.iter().map(|r| r.forward_ms + r.backward_ms).sum();
    let backward = rows.iter().any(|r| r.backward_ms > 0.0);
    let mut out = format!(
        "  profile      mean per step over {steps} profiled step{}\n",
        if steps == 1 { "" } else { "s" }
    );
    out += &format!(
        "    {:>4}  {:<22} {:<24} {:<16} {:>10}{}  {:>6}\n",
        "node",
        "op",
        "layer",
        "shape",
        "fwd ms",
        if backward { "     bwd ms" } else { "" },
        "share"
    );
    for r in rows {
        let shape = r
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let share = if total > 0.0 {
            100.0 * (r.forward_ms + r.backward_ms) / total
        } else {
            0.0
        };
        out += &format!(
            "    {:>4}  {:<22} {:<24} {:<16} {:>10.3}{}  {:>5.1}%\n",
            r.node,
            r.op,
            truncate(&r.layer, 24),
            shape,
            r.forward_ms,
            if backward {
                format!(" {:>10.3}", r.backward_ms)
            } else {
                String::new()
            },
            share
        );
    }
    out += &format!("    total {total:.3} ms per step in the nodes\n");
    if let Some(step) = step_ms {
        let outside = if backward {
            "loss, optimizer step, between nodes"
        } else {
            "between nodes"
        };
        out += &format!(
            "    step  {step:.3} ms per profiled step, {:.3} ms of it outside the nodes ({outside})\n",
            step - total
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: usize, f: f64, b: f64) -> NodeProfile {
        NodeProfile {
            node,
            op: "fused_conv2d",
            layer: "conv2d_1".into(),
            shape: vec![28, 28, 64],
            forward_ms: f,
            backward_ms: b,
        }
    }

    #[test]
    fn shares_sum_to_the_total() {
        let text = render(&[row(1, 3.0, 1.0), row(2, 1.0, 0.0)], 4, Some(5.5));
        // 4 of 5 ms and 1 of 5 ms.
        assert!(text.contains(" 80.0%"), "{text}");
        assert!(text.contains(" 20.0%"), "{text}");
        assert!(text.contains("total 5.000 ms"), "{text}");
        assert!(text.contains("28x28x64"), "{text}");
        // 5.5 ms per step, 5 of them in the nodes.
        assert!(
            text.contains("step  5.500 ms per profiled step, 0.500 ms of it outside"),
            "{text}"
        );
    }

    #[test]
    fn inference_profile_has_no_backward_column() {
        let text = render(&[row(1, 2.0, 0.0)], 1, None);
        assert!(!text.contains("bwd ms"), "{text}");
    }

    #[test]
    fn long_layer_names_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
