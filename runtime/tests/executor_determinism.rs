//! Bit-for-bit determinism of forward + backward on the Fashion-MNIST CNN
//! graph (dropout included), inside explicit rayon pools.

mod kernels_support;

use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use kernels_support::*;
use ndarray::IxDyn;

/// One training step's logits and parameter gradients, computed in a pool of
/// `threads` threads.
fn step(threads: usize, seed: u64) -> (Tensor, Vec<Tensor>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let graph = fashion_mnist_graph();
        let params = ParamStore::init(&graph, 5);
        let x = Tensor::from_shape_vec(IxDyn(&[12, 28, 28, 1]), rand_vec(12 * 784, 6)).unwrap();
        let mut ex = Executor::new(graph);
        let logits = ex.forward(&params, &x, Mode::Train { seed });
        let w = Tensor::from_shape_vec(IxDyn(logits.shape()), rand_vec(logits.len(), 7)).unwrap();
        let grads = ex.backward(&params, &w);
        (logits, grads)
    })
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn same_seed_same_bits_in_two_thread_pool() {
    let (l1, g1) = step(2, 3);
    let (l2, g2) = step(2, 3);
    assert_eq!(l1.shape(), &[12, 10]);
    assert_eq!(bits(&l1), bits(&l2));
    assert_eq!(g1.len(), g2.len());
    for (a, b) in g1.iter().zip(&g2) {
        assert_eq!(bits(a), bits(b));
    }
    // The gradients are not trivially zero.
    assert!(g1.iter().all(|g| g.iter().any(|v| *v != 0.0)));
}

#[test]
fn different_dropout_seed_changes_the_step() {
    let (l1, _) = step(2, 3);
    let (l2, _) = step(2, 4);
    assert_ne!(bits(&l1), bits(&l2));
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // Work is split into fixed chunks whose partial sums are combined in a
    // fixed order, so even the thread count does not change the bits.
    let (l1, g1) = step(1, 3);
    let (l2, g2) = step(2, 3);
    assert_eq!(bits(&l1), bits(&l2));
    for (a, b) in g1.iter().zip(&g2) {
        assert_eq!(bits(a), bits(b));
    }
}
