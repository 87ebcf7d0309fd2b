//! A memory estimate made before anything is allocated, so that a model or a
//! batch too large for the machine is an error, not an allocation abort.

use cnnc_compiler::graph::memory::plan_training_gradients;
use cnnc_compiler::graph::Graph;

/// Bytes a run of `graph` at `batch_size` needs, roughly: parameters (f32),
/// plus for training their gradients and two optimizer slots (Adam's `m`, `v`),
/// plus every node's activation for the batch (kept for backward in training)
/// and, in training, the activation gradients' shared buffers
/// (`plan_training_gradients`, as the runtime allocates them).
pub fn estimate_bytes(graph: &Graph, batch_size: usize, training: bool) -> f64 {
    let params: f64 = graph
        .params
        .iter()
        .map(|p| p.shape.iter().map(|&d| d as f64).product::<f64>())
        .sum();
    let activations: f64 = graph
        .nodes
        .iter()
        .map(|n| n.shape.iter().map(|&d| d as f64).product::<f64>())
        .sum();
    let (param_copies, gradients) = if training {
        (4.0, plan_training_gradients(graph).planned_len as f64)
    } else {
        (1.0, 0.0)
    };
    4.0 * (params * param_copies + (activations + gradients) * batch_size as f64)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (None where there is no such file).
fn available_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Fails with a message naming the sizes and the fix when the estimate
/// exceeds the memory available now.
pub fn check_fits(graph: &Graph, batch_size: usize, training: bool) -> Result<(), String> {
    let needed = estimate_bytes(graph, batch_size, training);
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    if needed <= available {
        return Ok(());
    }
    let gib = |b: f64| b / (1024.0 * 1024.0 * 1024.0);
    Err(format!(
        "`{}` at batch size {batch_size} needs about {:.1} GiB ({} parameters{}), but only {:.1} GiB of memory is available; \
         use fewer filters or units, or a smaller batch size",
        graph.name,
        gib(needed),
        graph.param_count(),
        if training { ", their gradients and optimizer state, and activations kept for backward" } else { " and activations" },
        gib(available)
    ))
}
