//! The gradient memory plan of training (`plan_gradients`, used by
//! `Executor::new`): activation gradients share buffers by lifetime. Checked
//! here: training steps are bit-identical with and without the plan
//! (`Executor::without_gradient_reuse`), on one and two threads, for the
//! Fashion-MNIST CNN and a DAG with residual add, multiply, concat, flatten,
//! dropout, a frozen kernel and two outputs; and the bytes the executor
//! allocates are what the plan predicts.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::memory::{
    needs_gradient, plan_gradients_without_reuse, plan_training_gradients,
};
use cnnc_compiler::graph::{lower, passes, Graph, NodeId, Op};
use cnnc_compiler::model::Activation;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use graph_support::*;

/// The Fashion-MNIST CNN of `specs/fashion_mnist.cnn` as the trainer runs
/// it (training passes applied: conv + bias + relu fused).
fn fashion_mnist() -> Graph {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/fashion_mnist.cnn"
    ))
    .expect("spec file");
    let model = cnnc_compiler::check_source(&text).expect("valid spec");
    passes::optimize(lower::lower(&model), passes::Target::Training).0
}

/// A DAG exercising every way a gradient is delivered: a residual add, a
/// multiply and a concat (joins), a relu / bias add / dropout (in place), a
/// flatten (alias) read by two branches, a frozen 1x1 conv kernel, a
/// batch norm, and two outputs, the first a stand-alone softmax (skipped in
/// training, so its input is the training output).
fn dag() -> Graph {
    let mut d = Dag::new();
    let x = d.input(&[6, 6, 2]);
    let c0 = d.conv(x, 4, 3, true, true);
    let b0 = d.bn(c0, 0.9, 1e-3, false, true);
    let a = d.act(b0, Activation::Relu);
    let b = d.conv(a, 4, 3, true, true);
    let s = d.add(&[a, b]);
    let c = d.act(s, Activation::Relu);
    let one_by_one = d.conv(a, 2, 1, true, true);
    let m = d.multiply(&[c, a]);
    let cat = d.concat(&[m, one_by_one], 2);
    let p = d.max_pool2(cat);
    let f = d.flatten(p);
    let shape = d.shape(f);
    let dropped = d.node(Op::Dropout { rate: 0.3 }, &[f], shape);
    let h = d.dense(dropped, 5);
    let probs = d.act(h, Activation::Softmax);
    let flat = d.flatten(c);
    let second = d.dense(flat, 3);
    d.outputs(&[probs, second]);
    let mut g = d.build();
    let frozen = g
        .params
        .iter_mut()
        .find(|p| p.shape == [1, 1, 4, 2])
        .expect("the 1x1 kernel");
    frozen.trainable = false;
    g
}

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter()
        .map(|t| t.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// What two training steps produce: per step, the outputs and every
/// parameter gradient, and the parameters after a plain SGD update
/// (`p -= 0.05 * g`), as bits. `all_outputs` seeds a gradient at every graph
/// output (`try_backward_multi`), else at the first only.
fn two_steps(
    ex: &mut Executor,
    graph: &Graph,
    mode: Mode,
    all_outputs: bool,
) -> Vec<Vec<Vec<u32>>> {
    let mut params = params_for(graph, 3);
    let mut shape = vec![3];
    shape.extend_from_slice(&graph.nodes[graph.input.0].shape);
    let mut seen = Vec::new();
    for step in 0..2u64 {
        let x = tensor(&shape, 10 + step);
        let mode = match mode {
            Mode::Train { seed } => Mode::Train { seed: seed + step },
            m => m,
        };
        let ys = ex.try_forward_multi(&params, &[&x], mode).unwrap();
        let ws: Vec<Tensor> = ys
            .iter()
            .enumerate()
            .map(|(k, y)| tensor(y.shape(), 50 + k as u64 + step))
            .collect();
        let grads = if all_outputs {
            let refs: Vec<&Tensor> = ws.iter().collect();
            ex.try_backward_multi(&params, &refs).unwrap()
        } else {
            ex.try_backward(&params, &ws[0]).unwrap()
        };
        for (p, g) in params.values.iter_mut().zip(&grads) {
            p.zip_mut_with(g, |p, g| *p -= 0.05 * g);
        }
        seen.push(bits(&ys));
        seen.push(bits(&grads));
        seen.push(bits(&params.values));
    }
    seen
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Planned and unplanned executors agree bit for bit, on 1 and 2 threads.
fn check_identical(graph: &Graph, mode: Mode, all_outputs: bool) {
    for threads in [1, 2] {
        let (planned, reference) = in_pool(threads, || {
            let mut planned = Executor::new(graph.clone());
            let mut reference = Executor::without_gradient_reuse(graph.clone());
            planned.validate().unwrap();
            reference.validate().unwrap();
            (
                two_steps(&mut planned, graph, mode, all_outputs),
                two_steps(&mut reference, graph, mode, all_outputs),
            )
        });
        assert!(
            planned == reference,
            "{}: {mode:?}, all outputs {all_outputs}, {threads} threads: results differ",
            graph.name
        );
    }
}

#[test]
fn fashion_mnist_steps_are_bit_identical_with_shared_gradient_buffers() {
    let g = fashion_mnist();
    // The plan does share: fewer gradient slots than nodes with a gradient.
    let plan = plan_training_gradients(&g);
    assert!(plan.planned_len < plan.unplanned_len);
    check_identical(&g, Mode::Train { seed: 1 }, false);
}

#[test]
fn dag_steps_are_bit_identical_with_shared_gradient_buffers() {
    let g = dag();
    let plan = plan_training_gradients(&g);
    assert!(plan.planned_len < plan.unplanned_len);
    assert!(
        plan.in_place.iter().any(|&p| p),
        "some gradient is born in place"
    );
    for all_outputs in [false, true] {
        check_identical(&g, Mode::Train { seed: 2 }, all_outputs);
        // Backward after an inference forward (the softmax is differentiated).
        check_identical(&g, Mode::Inference, all_outputs);
    }
}

#[test]
fn gradient_bytes_are_what_the_plan_predicts() {
    let g = fashion_mnist();
    // The training output is the graph output here (the softmax is fused
    // into the last dense layer), so the executor's plan is the training plan.
    let plan = plan_training_gradients(&g);
    let batch = 4;
    let mut planned = Executor::new(g.clone());
    let mut reference = Executor::without_gradient_reuse(g.clone());
    let params = ParamStore::init(&g, 1);
    let x = tensor(&[batch, 28, 28, 1], 2);
    let w = tensor(&[batch, 10], 3);
    for ex in [&mut planned, &mut reference] {
        ex.forward(&params, &x, Mode::Train { seed: 1 });
        assert_eq!(ex.gradient_bytes(), 0, "no gradient buffer before backward");
        ex.backward(&params, &w);
    }
    // One buffer per slot of `slot_len * batch` floats, each allocated in
    // whole 64-byte cache lines (`AlignedBuf`).
    let bytes = |slot_len: &[usize]| -> usize {
        slot_len
            .iter()
            .map(|&len| (len * batch).div_ceil(16) * 64)
            .sum()
    };
    let unplanned = plan_gradients_without_reuse(&g, &g.output_ids(), &needs_gradient(&g));
    assert_eq!(unplanned.unplanned_len, plan.unplanned_len);
    assert_eq!(planned.gradient_bytes(), bytes(&plan.slot_len));
    assert_eq!(reference.gradient_bytes(), bytes(&unplanned.slot_len));
    // Whole lines add less than 64 bytes per buffer to the plan's figures.
    assert!(planned.gradient_bytes() - plan.planned_len * batch * 4 < 64 * plan.slot_len.len());
    assert_eq!(
        reference.activation_bytes() - planned.activation_bytes(),
        bytes(&unplanned.slot_len) - bytes(&plan.slot_len)
    );
    // Fewer bytes again after more steps (nothing grows in the steady state).
    let before = planned.activation_bytes();
    planned.forward(&params, &x, Mode::Train { seed: 2 });
    planned.backward(&params, &w);
    assert_eq!(planned.activation_bytes(), before);
}

#[test]
fn a_conv_relu_chain_needs_two_gradient_buffers() {
    // input -> 6 x (conv 3x3, 3 filters, no bias -> relu): nodes 1..=12,
    // 8 * 8 * 3 = 192 values each, all needing a gradient (the first conv's
    // kernel is trainable), the input none. Backward: d12 seeded (slot A);
    // each relu turns its gradient into its input's in place; each conv
    // writes its input's gradient into the other slot and frees its own;
    // the first conv writes nothing. So 2 slots of 192 values, against 12
    // buffers of 192 without reuse.
    let g = conv_relu_chain(6);
    let needs = needs_gradient(&g);
    assert_eq!(needs.iter().filter(|&&n| n).count(), 12);
    let plan = plan_training_gradients(&g);
    plan.validate(&g, &[NodeId(12)], &needs).unwrap();
    assert_eq!(plan.slot_len, vec![192, 192]);
    assert_eq!(plan.unplanned_len, 12 * 192);

    let batch = 2;
    let params = params_for(&g, 4);
    let input = tensor(&[batch, 8, 8, 3], 5);
    let w = tensor(&[batch, 8, 8, 3], 6);
    let mut planned = Executor::new(g.clone());
    let mut reference = Executor::without_gradient_reuse(g);
    let a = {
        planned.forward(&params, &input, Mode::Train { seed: 1 });
        planned.backward(&params, &w)
    };
    let b = {
        reference.forward(&params, &input, Mode::Train { seed: 1 });
        reference.backward(&params, &w)
    };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(planned.gradient_bytes(), 2 * 192 * batch * 4);
    assert_eq!(reference.gradient_bytes(), 12 * 192 * batch * 4);
    assert_eq!(
        reference.activation_bytes() - planned.activation_bytes(),
        10 * 192 * batch * 4
    );
}

#[test]
fn batch_size_changes_keep_results_identical() {
    // Slots sized for a batch of 4 serve a batch of 2 and then grow for 5.
    let g = dag();
    let params = params_for(&g, 7);
    let mut planned = Executor::new(g.clone());
    let mut reference = Executor::without_gradient_reuse(g);
    for (batch, seed) in [(4, 1), (2, 2), (5, 3)] {
        let x = tensor(&[batch, 6, 6, 2], seed);
        let run = |ex: &mut Executor| {
            let ys = ex
                .try_forward_multi(&params, &[&x], Mode::Train { seed })
                .unwrap();
            let ws: Vec<Tensor> = ys.iter().map(|y| tensor(y.shape(), seed + 20)).collect();
            let refs: Vec<&Tensor> = ws.iter().collect();
            bits(&ex.try_backward_multi(&params, &refs).unwrap())
        };
        assert_eq!(run(&mut planned), run(&mut reference), "batch {batch}");
    }
}
