//! `Executor::for_inference`: the inference memory plan (shared slots,
//! aliases, element-wise ops overwriting dying inputs) computes exactly what
//! one buffer per node computes, across batch sizes, with less memory; and
//! what such an executor refuses.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::memory::{plan_inference, Placement};
use cnnc_compiler::graph::{Graph, Op};
use cnnc_compiler::model::Activation;
use cnnc_runtime::executor::{ExecError, Executor, Mode};
use graph_support::{conv_relu_chain, params_for, tensor, Dag};

/// A DAG whose plan uses every in-place kernel: bias add, batch norm,
/// activations, a three-input add overwriting its second input, a multiply,
/// softmax and dropout; flatten aliases; two outputs.
fn dag() -> (Graph, Vec<usize>) {
    let mut d = Dag::new();
    let x = d.input(&[6, 6, 2]);
    let a = d.conv(x, 4, 3, true, true); // conv -> bias_add (in place)
    let b = d.bn(a, 0.9, 1e-3, false, true); // in place
    let c = d.act(b, Activation::Relu); // in place; a graph output
    let e = d.conv(c, 4, 1, true, false);
    let f = d.act(e, Activation::Sigmoid); // in place over e
    let h = d.act(c, Activation::Tanh); // c lives on: a new slot
    let s = d.add(&[c, f, h]); // c is an output: overwrites f (input 1)
    let m = d.multiply(&[s, c]); // overwrites s
    let shape = d.shape(m);
    let sm = d.node(Op::Softmax, &[m], shape.clone()); // in place
    let dr = d.node(Op::Dropout { rate: 0.5 }, &[sm], shape); // identity, in place
    let fl = d.flatten(dr); // alias
    let out = d.dense(fl, 5); // matmul -> bias_add (in place)
    d.outputs(&[out, c]);
    let g = d.build();
    let ids = vec![a.0, b.0, c.0, f.0, s.0, m.0, sm.0, dr.0, fl.0, out.0];
    (g, ids)
}

#[test]
fn the_plan_computes_in_place_where_it_says_so() {
    let (g, ids) = dag();
    let plan = plan_inference(&g);
    let [a, b, c, f, s, m, sm, dr, fl, out] = ids[..] else {
        unreachable!()
    };
    let in_place = |i: usize| match plan.placement[i] {
        Placement::InPlace { input, .. } => Some(input),
        _ => None,
    };
    assert_eq!(in_place(a), Some(0), "bias add");
    assert_eq!(in_place(b), Some(0), "batch norm");
    assert_eq!(in_place(c), Some(0), "relu");
    assert_eq!(in_place(f), Some(0), "sigmoid");
    assert_eq!(in_place(s), Some(1), "add over its second input");
    assert_eq!(in_place(m), Some(0), "multiply");
    assert_eq!(in_place(sm), Some(0), "softmax");
    assert_eq!(in_place(dr), Some(0), "dropout");
    assert!(matches!(plan.placement[fl], Placement::Alias { .. }));
    assert_eq!(in_place(out), Some(0), "dense bias add");
}

#[test]
fn planned_and_per_node_buffers_agree_exactly_across_batch_sizes() {
    let (g, _) = dag();
    let params = params_for(&g, 3);
    let mut planned = Executor::for_inference(g.clone());
    planned.validate().unwrap();
    assert!(planned.is_inference_only());
    let mut per_node = Executor::new(g.clone());
    for (batch, seed) in [(3, 1), (1, 2), (4, 3), (4, 4)] {
        let x = tensor(&[batch, 6, 6, 2], seed);
        let a = planned
            .try_forward_multi(&params, &[&x], Mode::Inference)
            .unwrap();
        let b = per_node
            .try_forward_multi(&params, &[&x], Mode::Inference)
            .unwrap();
        assert_eq!(a, b, "batch {batch}");
        let mut outs = Vec::new();
        planned
            .forward_multi_into(&params, &[&x], Mode::Inference, &mut outs)
            .unwrap();
        assert_eq!(outs, b, "batch {batch} (into)");
    }
    assert!(planned.activation_bytes() < per_node.activation_bytes());
}

#[test]
fn only_outputs_are_kept_and_training_is_refused() {
    let (g, ids) = dag();
    let params = params_for(&g, 5);
    let x = tensor(&[2, 6, 6, 2], 6);
    let mut ex = Executor::for_inference(g.clone());
    assert_eq!(ex.node_value(g.output), None, "before any forward");
    let y = ex.forward(&params, &x, Mode::Inference);
    assert_eq!(ex.node_value(g.output), Some(y));
    assert!(ex.node_value(g.outputs[1]).is_some());
    assert_eq!(ex.node_value(cnnc_compiler::graph::NodeId(ids[4])), None);
    assert!(matches!(
        ex.try_forward(&params, &x, Mode::Train { seed: 1 }),
        Err(ExecError::InferenceOnly(_))
    ));
    let w = tensor(&[2, 5], 7);
    assert!(matches!(
        ex.try_backward(&params, &w),
        Err(ExecError::InferenceOnly(_))
    ));
    // The general executor still differentiates an inference forward.
    let mut general = Executor::new(g);
    general.forward(&params, &x, Mode::Inference);
    assert!(general.try_backward(&params, &w).is_ok());
}

#[test]
fn a_chain_reuses_two_buffers() {
    // conv -> relu -> conv -> relu -> ... : the plan needs two slots (plus
    // the input's), however long the chain.
    let g = conv_relu_chain(6);
    let params = params_for(&g, 8);
    let input = tensor(&[2, 8, 8, 3], 9);
    let mut planned = Executor::for_inference(g.clone());
    let mut per_node = Executor::new(g);
    assert_eq!(
        planned.forward(&params, &input, Mode::Inference),
        per_node.forward(&params, &input, Mode::Inference)
    );
    let image = 2 * 8 * 8 * 3 * 4;
    assert!(
        planned.activation_bytes() <= 3 * image,
        "{} bytes planned",
        planned.activation_bytes()
    );
    assert!(per_node.activation_bytes() >= 13 * image);
}
