//! In the steady state (same batch size, after a warm-up step) a training
//! step's forward and backward and an inference forward allocate no
//! activation, gradient or parameter-sized buffers: every such buffer is
//! reused from step to step. Measured with a counting global allocator (one
//! test in this binary, so nothing else allocates meanwhile), on a
//! one-thread rayon pool: the kernels' per-thread scratch buffers grow the
//! first time each worker thread runs each kernel, which on a larger pool
//! may happen after the warm-up step, depending on work stealing.

use cnnc_compiler::graph::{lower, passes};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::{InferenceParams, ParamStore};
use cnnc_runtime::tensor::Tensor;
use ndarray::IxDyn;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and the largest single allocation while `f` runs.
fn measure(f: impl FnOnce()) -> (usize, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    let before = BYTES.load(Ordering::SeqCst);
    f();
    (
        BYTES.load(Ordering::SeqCst) - before,
        LARGEST.load(Ordering::SeqCst),
    )
}

/// A residual network with batch norms, a dense head and dropout.
const NET: &str = "model net {
  input [16, 16, 3]
  stem = conv2d(8, 3, padding=same) -> batch_normalization -> relu
  branch = stem -> conv2d(8, 3, padding=same) -> batch_normalization -> relu
    -> conv2d(8, 3, padding=same) -> batch_normalization
  sum = add(stem, branch) -> relu -> max_pool2d(2)
  head = sum -> flatten -> dense(32, activation=relu) -> dropout(0.25) -> dense(10, activation=softmax)
}";

#[test]
fn steady_state_steps_allocate_no_large_buffers() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(check_steady_state);
}

fn check_steady_state() {
    let model = cnnc_compiler::check_source(NET).expect("valid spec");
    let graph = lower::lower(&model);
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    let batch = 8;
    let x = Tensor::from_shape_vec(
        IxDyn(&[batch, 16, 16, 3]),
        (0..batch * 768)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect(),
    )
    .unwrap();
    // One 16 x 16 x 8 activation for the batch.
    let activation = batch * 16 * 16 * 8 * 4;

    let mut params = ParamStore::init(&training, 1);
    let mut ex = Executor::new(training.clone());
    let mut logits = Tensor::zeros(IxDyn(&[0]));
    let mut grads: Vec<Tensor> = Vec::new();
    let grad_logits = Tensor::from_elem(IxDyn(&[batch, 10]), 0.01);
    let mut step = |seed: u64, params: &mut ParamStore| {
        ex.forward_into(&*params, &x, Mode::Train { seed }, &mut logits)
            .unwrap();
        ex.backward_into(params, &grad_logits, &mut grads).unwrap();
        ex.update_moving_statistics(params).unwrap();
    };
    step(0, &mut params); // warm-up: buffers are allocated here
    let (bytes, largest) = measure(|| {
        for seed in 1..4 {
            step(seed, &mut params);
        }
    });
    // What remains are small per-kernel vectors (batch-norm partial sums,
    // bookkeeping): about 10 kB per step here, none over a few hundred bytes.
    assert!(
        largest <= 4096 && bytes / 3 < activation / 2,
        "a training step allocated {largest} bytes at once ({bytes} in all over 3 steps)"
    );

    let prepared = InferenceParams::prepare(&inference, params.clone()).unwrap();
    let mut planned = Executor::for_inference(inference);
    let mut out = Tensor::zeros(IxDyn(&[0]));
    planned
        .forward_into(&prepared, &x, Mode::Inference, &mut out)
        .unwrap();
    let (bytes, largest) = measure(|| {
        for _ in 0..3 {
            planned
                .forward_into(&prepared, &x, Mode::Inference, &mut out)
                .unwrap();
        }
    });
    assert!(
        largest <= 4096 && bytes / 3 < 1024,
        "an inference forward allocated {largest} bytes at once ({bytes} in all over 3)"
    );
}
