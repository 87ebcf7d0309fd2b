//! `ParamStore::init`: Glorot uniform kernels, zero biases, seeded.

mod kernels_support;

use cnnc_compiler::graph::ir::Init;
use cnnc_runtime::params::{glorot_limit, ParamStore};
use kernels_support::*;

#[test]
fn glorot_uniform_and_zeros() {
    let g = fashion_mnist_graph();
    let p = ParamStore::init(&g, 42);
    assert_eq!(p.values.len(), g.params.len());
    p.check(&g).unwrap();
    for (param, v) in g.params.iter().zip(&p.values) {
        assert_eq!(v.shape(), param.shape.as_slice());
        match param.init {
            Init::Zeros => assert!(v.iter().all(|x| *x == 0.0), "{}", param.name),
            Init::Ones => assert!(v.iter().all(|x| *x == 1.0), "{}", param.name),
            Init::GlorotUniform { fan_in, fan_out } => {
                let l = (6.0 / (fan_in + fan_out) as f64).sqrt();
                assert!(v.iter().all(|x| (x.abs() as f64) <= l), "{}", param.name);
                // U(-l, l): mean 0, variance l² / 3.
                let n = v.len() as f64;
                let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
                let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
                assert!(
                    mean.abs() < 5.0 * l / (3.0 * n).sqrt(),
                    "{} mean {mean}",
                    param.name
                );
                let rel = var / (l * l / 3.0);
                assert!(
                    (rel - 1.0).abs() < 0.1,
                    "{} variance ratio {rel}",
                    param.name
                );
            }
            Init::Folded { .. } => panic!("a lowered graph has no folded parameters"),
        }
    }
    // conv 7×7×1 -> 64: fan_in 49, fan_out 3136.
    assert!((glorot_limit(49, 3136) - (6.0f32 / 3185.0).sqrt()).abs() < 1e-7);
}

#[test]
fn init_is_seeded() {
    let g = fashion_mnist_graph();
    let a = ParamStore::init(&g, 1);
    let b = ParamStore::init(&g, 1);
    let c = ParamStore::init(&g, 2);
    assert_eq!(a.values, b.values);
    assert_ne!(a.values[0], c.values[0]);
    // Parameters are drawn one after another from one stream: the second
    // kernel does not restart the sequence of the first.
    let first: Vec<f32> = a.values[0]
        .iter()
        .take(8)
        .map(|v| v / glorot_limit(49, 3136))
        .collect();
    let second: Vec<f32> = a.values[2]
        .iter()
        .take(8)
        .map(|v| v / glorot_limit(576, 1152))
        .collect();
    assert_ne!(first, second);
}
