//! Typed errors of the executor and parameter store on bad input.

mod kernels_support;

use cnnc_compiler::model::Activation;
use cnnc_runtime::executor::{ExecError, Executor, Mode};
use cnnc_runtime::params::{ParamError, ParamStore};
use cnnc_runtime::tensor::Tensor;
use kernels_support::*;
use ndarray::IxDyn;

fn graph() -> cnnc_compiler::graph::Graph {
    let mut g = GraphBuilder::new(&[4, 4, 1]);
    g.conv(2, [3, 3], [1, 1], true, Some((true, Activation::Relu)));
    g.flatten();
    g.matmul(3, Some((true, Activation::Linear)));
    g.softmax();
    g.build()
}

#[test]
fn wrong_input_shape_is_a_typed_error() {
    let g = graph();
    let p = ParamStore::init(&g, 1);
    let mut ex = Executor::new(g);
    let bad = Tensor::zeros(IxDyn(&[2, 4, 5, 1]));
    let e = ex.check_input(&bad).unwrap_err();
    assert_eq!(
        e,
        ExecError::InputShape {
            expected: vec![4, 4, 1],
            got: vec![2, 4, 5, 1]
        }
    );
    assert_eq!(
        e.to_string(),
        "input has shape [2, 4, 5, 1], expected [batch, 4, 4, 1]"
    );
    assert!(ex.try_forward(&p, &bad, Mode::Inference).is_err());
    // Missing batch axis.
    assert!(ex.check_input(&Tensor::zeros(IxDyn(&[4, 4, 1]))).is_err());
    assert!(ex.check_input(&Tensor::zeros(IxDyn(&[3, 4, 4, 1]))).is_ok());
}

#[test]
fn mismatched_params_are_typed_errors() {
    let g = graph();
    let x = Tensor::zeros(IxDyn(&[1, 4, 4, 1]));
    let mut ex = Executor::new(g.clone());
    let mut p = ParamStore::init(&g, 1);
    p.values.pop();
    assert!(matches!(
        ex.try_forward(&p, &x, Mode::Inference),
        Err(ExecError::Params(ParamError::Count {
            expected: 4,
            got: 3
        }))
    ));
    let mut p = ParamStore::init(&g, 1);
    p.values[1] = Tensor::zeros(IxDyn(&[3]));
    match ex.try_forward(&p, &x, Mode::Inference) {
        Err(ExecError::Params(ParamError::Shape {
            name,
            expected,
            got,
        })) => {
            assert_eq!(name, g.params[1].name);
            assert_eq!((expected, got), (vec![2], vec![3]));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn backward_errors() {
    let g = graph();
    let p = ParamStore::init(&g, 1);
    let mut ex = Executor::new(g);
    let gout = Tensor::zeros(IxDyn(&[2, 3]));
    assert_eq!(
        ex.try_backward(&p, &gout).unwrap_err(),
        ExecError::NoForward
    );
    ex.forward(
        &p,
        &Tensor::zeros(IxDyn(&[2, 4, 4, 1])),
        Mode::Train { seed: 0 },
    );
    assert!(matches!(
        ex.try_backward(&p, &Tensor::zeros(IxDyn(&[3, 3]))),
        Err(ExecError::GradShape { .. })
    ));
    assert!(ex.try_backward(&p, &gout).is_ok());
}

#[test]
fn malformed_graphs_are_reported() {
    // A node whose declared shape disagrees with its op.
    let mut g = graph();
    g.nodes[1].shape = vec![4, 4, 3];
    let ex = Executor::new(g.clone());
    assert!(matches!(
        ex.validate(),
        Err(ExecError::Graph { node: 1, .. })
    ));
    let p = ParamStore::init(&g, 1);
    let mut ex = ex;
    assert!(matches!(
        ex.try_forward(&p, &Tensor::zeros(IxDyn(&[1, 4, 4, 1])), Mode::Inference),
        Err(ExecError::Graph { .. })
    ));
    // A dropout rate outside [0, 1).
    let mut b = GraphBuilder::new(&[3]);
    b.dropout(1.0);
    assert!(matches!(
        Executor::new(b.build()).validate(),
        Err(ExecError::Graph { .. })
    ));
    // A parameter of the wrong declared shape.
    let mut g = graph();
    g.params[0].shape = vec![3, 3, 2, 2];
    assert!(Executor::new(g).validate().is_err());
    assert!(Executor::new(graph()).validate().is_ok());
}

#[test]
fn empty_batch_is_fine() {
    let g = graph();
    let p = ParamStore::init(&g, 1);
    let mut ex = Executor::new(g);
    let y = ex.forward(
        &p,
        &Tensor::zeros(IxDyn(&[0, 4, 4, 1])),
        Mode::Train { seed: 1 },
    );
    assert_eq!(y.shape(), &[0, 3]);
    let grads = ex.backward(&p, &y);
    assert!(grads.iter().all(|g| g.iter().all(|v| *v == 0.0)));
}
