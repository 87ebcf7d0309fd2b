//! Kernel and whole-model throughput on the Fashion-MNIST CNN shapes
//! (batch 128): `cargo bench -p cnnc-runtime --bench kernels`.
//!
//! Throughput is reported in "elements": floating-point operations for the
//! conv groups (so `Gelem/s` reads as GFLOP/s, 2 × multiply-adds) and images
//! for the `model` group (`Kelem/s` × 1000 = images/s for one training step,
//! forward + backward).

#[path = "../tests/kernels_support/mod.rs"]
mod kernels_support;

use cnnc_compiler::graph::ir::Conv2dAttrs;
use cnnc_compiler::model::{Activation, Pads2d};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::kernels::{conv2d_backward, conv2d_forward, Conv2dShape};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels_support::{fashion_mnist_graph, rand_vec};
use ndarray::IxDyn;
use std::time::Duration;

const BATCH: usize = 128;

/// (spatial size, in_channels, filters, kernel) of the five conv layers.
const LAYERS: [(usize, usize, usize, usize); 5] = [
    (28, 1, 64, 7),
    (14, 64, 128, 3),
    (14, 128, 128, 3),
    (7, 128, 256, 3),
    (7, 256, 256, 3),
];

fn shape(hw: usize, c: usize, f: usize, k: usize) -> Conv2dShape {
    let p = (k - 1) / 2;
    let attrs = Conv2dAttrs {
        in_channels: c,
        filters: f,
        kernel_size: [k, k],
        strides: [1, 1],
        pads: Pads2d {
            top: p,
            bottom: k - 1 - p,
            left: p,
            right: k - 1 - p,
        },
        dilation_rate: [1, 1],
    };
    Conv2dShape::new(&attrs, BATCH, hw, hw).expect("valid layer")
}

/// Per-layer conv kernels on one thread (per-core GFLOP/s).
fn conv(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut g = c.benchmark_group("conv_1_thread");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (hw, cin, f, k) in LAYERS {
        let s = shape(hw, cin, f, k);
        let name = format!("{hw}x{hw}x{cin}->{f}_k{k}");
        let x = rand_vec(s.input_len(), 1);
        let w: Vec<f32> = rand_vec(s.kernel_len(), 2)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let b = vec![0.01f32; f];
        let mut y = vec![0.0; s.output_len()];
        let flops = 2 * s.macs() as u64;
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::new("forward_bias_relu", &name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    conv2d_forward(&s, &x, &w, Some(&b), Activation::Relu, &mut y).unwrap()
                })
            })
        });
        let gy = rand_vec(s.output_len(), 3);
        let mut dy = gy.clone();
        let (mut dx, mut dk, mut db) = (
            vec![0.0; s.input_len()],
            vec![0.0; s.kernel_len()],
            vec![0.0; f],
        );
        // d kernel + d bias (+ relu backward): one GEMM's worth of flops.
        g.bench_function(BenchmarkId::new("backward_dkernel", &name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    dy.copy_from_slice(&gy);
                    let (dk, db) = (Some(dk.as_mut_slice()), Some(db.as_mut_slice()));
                    conv2d_backward(&s, &x, &w, &y, Activation::Relu, &mut dy, None, dk, db)
                        .unwrap()
                })
            })
        });
        g.bench_function(BenchmarkId::new("backward_dinput", &name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    let dx = Some(dx.as_mut_slice());
                    conv2d_backward(&s, &x, &w, &y, Activation::Linear, &mut dy, dx, None, None)
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

fn model(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(BATCH as u64));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let graph = fashion_mnist_graph();
        let params = ParamStore::init(&graph, 5);
        let x = Tensor::from_shape_vec(IxDyn(&[BATCH, 28, 28, 1]), rand_vec(BATCH * 784, 6))
            .expect("shape");
        let w =
            Tensor::from_shape_vec(IxDyn(&[BATCH, 10]), rand_vec(BATCH * 10, 7)).expect("shape");
        let mut ex = Executor::new(graph);
        let mut grads = Vec::new();
        let mut seed = 0;
        g.bench_function(
            BenchmarkId::new("train_step_b128", format!("{threads}_threads")),
            |bch| {
                bch.iter(|| {
                    pool.install(|| {
                        seed += 1;
                        ex.forward(&params, &x, Mode::Train { seed });
                        ex.backward_into(&params, &w, &mut grads).unwrap();
                    })
                })
            },
        );
        g.bench_function(
            BenchmarkId::new("inference_b128", format!("{threads}_threads")),
            |bch| bch.iter(|| pool.install(|| ex.forward(&params, &x, Mode::Inference))),
        );
    }
    g.finish();
}

criterion_group!(benches, conv, model);
criterion_main!(benches);
