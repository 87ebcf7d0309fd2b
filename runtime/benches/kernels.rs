//! Kernel and whole-model throughput: `cargo bench -p cnnc-runtime --bench kernels [-- FILTER]`.
//!
//! Groups:
//! - `conv_1_thread`: the five convolutions of the Fashion-MNIST CNN at
//!   batch 128, forward and both backward GEMMs;
//! - `zoo_1_thread`: inference kernels at the shapes of ResNet-50, Xception
//!   and MobileNetV2 at batch 1 (what `bench/run.sh`'s zoo rows run):
//!   3x3 stride-1 and 1x1 convolutions at ResNet-50's four stages, the 7x7
//!   stride-2 stem, depthwise 3x3 (Xception's middle flow and entry flow,
//!   MobileNetV2's stride-2 block), batch norm with moving statistics,
//!   max pooling (ResNet-50's 3x3 stride-2 stem pool, Xception's 3x3
//!   stride-2 `same` pool, the Fashion CNN's 2x2) and a 2x2 average pool;
//! - `winograd_kernel`: the Winograd F(2x2, 3x3) kernel transforms a
//!   training step makes for each Winograd conv (the forward kernel's, and
//!   the rotated one of the input gradient), at the Fashion CNN's 3x3
//!   channel counts (its 14x14 layers, 64 -> 128 and 128 -> 128, train by
//!   Winograd; its 7x7 ones, 128 -> 256 and 256 -> 256, by im2col, and are
//!   here as larger cases), on 1 and 2 threads;
//! - `model`: a Fashion-MNIST CNN training step and inference at batch 128,
//!   on 1 and 2 threads.
//!
//! Throughput is reported in "elements": floating-point operations for the
//! conv and depthwise cases (so `Gelem/s` reads as GFLOP/s, 2 × multiply-adds),
//! bytes read + written for batch norm and pooling (memory-bound: `GiB/s`),
//! kernel floats written for `winograd_kernel`, and images for the `model` group (`Kelem/s` × 1000 = images/s for one
//! training step, forward + backward).

#[path = "../tests/kernels_support/mod.rs"]
mod kernels_support;

use cnnc_compiler::graph::ir::{Conv2dAttrs, DepthwiseConv2dAttrs, Pool2dAttrs};
use cnnc_compiler::model::{Activation, Pads2d};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::kernels::depthwise::{depthwise_conv2d_forward, DepthwiseConv2dShape};
use cnnc_runtime::kernels::{
    avg_pool2d_forward, batch_norm_inference_forward, conv2d_backward, conv2d_forward,
    max_pool2d_forward, BatchNormShape, Conv2dShape, Pool2dShape,
};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels_support::{fashion_mnist_graph, rand_vec, same_pads2d};
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

/// A pool of `threads` rayon workers (the kernels use the current pool).
fn pool_of(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

/// Valid (no) padding.
const NO_PADS: Pads2d = Pads2d {
    top: 0,
    bottom: 0,
    left: 0,
    right: 0,
};

/// Convolutions of ResNet-50 (He et al. 2016, Keras `ResNet50` at 224x224):
/// (name, input size, in_channels, filters, kernel, stride).
const ZOO_CONVS: [(&str, usize, usize, usize, usize, usize); 9] = [
    ("resnet_stem_7x7s2", 224, 3, 64, 7, 2),
    ("resnet_conv2_3x3", 56, 64, 64, 3, 1),
    ("resnet_conv3_3x3", 28, 128, 128, 3, 1),
    ("resnet_conv4_3x3", 14, 256, 256, 3, 1),
    ("resnet_conv5_3x3", 7, 512, 512, 3, 1),
    ("resnet_conv2_1x1_expand", 56, 64, 256, 1, 1),
    ("resnet_conv3_1x1_reduce", 28, 512, 128, 1, 1),
    ("resnet_conv4_1x1_expand", 14, 256, 1024, 1, 1),
    ("resnet_conv5_1x1_reduce", 7, 2048, 512, 1, 1),
];

/// Depthwise 3x3 convolutions: (name, input size, channels, stride).
/// Xception (Chollet 2017) middle flow 19x19x728 and entry flow 74x74x256;
/// MobileNetV2 (Sandler et al. 2018) block 3, 112x112x96 stride 2 (with
/// Keras's `ZeroPadding2D` folded into the pads here).
const ZOO_DEPTHWISE: [(&str, usize, usize, usize); 3] = [
    ("xception_middle_19x19x728", 19, 728, 1),
    ("xception_entry_74x74x256", 74, 256, 1),
    ("mobilenet_v2_112x112x96_s2", 112, 96, 2),
];

/// Inference kernels at the zoo models' shapes, batch 1, one thread.
fn zoo(c: &mut Criterion) {
    let pool = pool_of(1);
    let mut g = c.benchmark_group("zoo_1_thread");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));

    for (name, hw, cin, f, k, stride) in ZOO_CONVS {
        let attrs = Conv2dAttrs {
            in_channels: cin,
            filters: f,
            kernel_size: [k, k],
            strides: [stride, stride],
            pads: same_pads2d(hw, hw, [k, k], [stride, stride]),
            dilation_rate: [1, 1],
        };
        let s = Conv2dShape::new(&attrs, 1, hw, hw).expect("valid layer");
        let x = rand_vec(s.input_len(), 11);
        let w: Vec<f32> = rand_vec(s.kernel_len(), 12)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let b = vec![0.01f32; f];
        let mut y = vec![0.0; s.output_len()];
        g.throughput(Throughput::Elements(2 * s.macs() as u64));
        g.bench_function(BenchmarkId::new("conv_bias_relu", name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    conv2d_forward(&s, &x, &w, Some(&b), Activation::Relu, &mut y).unwrap()
                })
            })
        });
    }

    for (name, hw, ch, stride) in ZOO_DEPTHWISE {
        let attrs = DepthwiseConv2dAttrs {
            in_channels: ch,
            depth_multiplier: 1,
            kernel_size: [3, 3],
            strides: [stride, stride],
            pads: same_pads2d(hw, hw, [3, 3], [stride, stride]),
            dilation_rate: [1, 1],
        };
        let s = DepthwiseConv2dShape::new(&attrs, 1, hw, hw).expect("valid layer");
        let x = rand_vec(s.input_len(), 13);
        let w = rand_vec(s.kernel_len(), 14);
        let mut y = vec![0.0; s.output_len()];
        g.throughput(Throughput::Elements(2 * s.macs() as u64));
        g.bench_function(BenchmarkId::new("depthwise3x3", name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    depthwise_conv2d_forward(&s, &x, &w, None, Activation::Linear, &mut y).unwrap()
                })
            })
        });
    }

    // Batch norm with moving statistics (inference): ResNet-50 conv2 output
    // and Xception's middle flow.
    for (name, hw, ch) in [
        ("resnet_56x56x256", 56, 256),
        ("xception_19x19x728", 19, 728),
    ] {
        let s = BatchNormShape {
            rows: hw * hw,
            channels: ch,
        };
        let x = rand_vec(s.len(), 15);
        let gamma = vec![1.1f32; ch];
        let beta = vec![0.1f32; ch];
        let mean = vec![0.05f32; ch];
        let var = vec![0.9f32; ch];
        let mut y = vec![0.0; s.len()];
        let mut inv_std = vec![0.0; ch];
        g.throughput(Throughput::Bytes(2 * 4 * s.len() as u64));
        g.bench_function(BenchmarkId::new("batch_norm_inference", name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    batch_norm_inference_forward(
                        &s,
                        &x,
                        Some(&gamma),
                        Some(&beta),
                        &mean,
                        &var,
                        1e-3,
                        &mut y,
                        &mut inv_std,
                    )
                    .unwrap()
                })
            })
        });
    }

    // (name, input size, channels, pool, stride, same padding, max or average)
    let pools = [
        ("max3x3s2_resnet_stem_112x112x64", 112, 64, 3, 2, true, true),
        ("max3x3s2_xception_147x147x128", 147, 128, 3, 2, true, true),
        ("max2x2s2_fashion_28x28x64", 28, 64, 2, 2, false, true),
        ("avg2x2s2_56x56x256", 56, 256, 2, 2, false, false),
    ];
    for (name, hw, ch, k, stride, same, is_max) in pools {
        let attrs = Pool2dAttrs {
            pool_size: [k, k],
            strides: [stride, stride],
            pads: if same {
                same_pads2d(hw, hw, [k, k], [stride, stride])
            } else {
                NO_PADS
            },
        };
        let s = Pool2dShape::new(&attrs, 1, hw, hw, ch).expect("valid pool");
        let x = rand_vec(s.input_len(), 16);
        let mut y = vec![0.0; s.output_len()];
        g.throughput(Throughput::Bytes(
            4 * (s.input_len() + s.output_len()) as u64,
        ));
        g.bench_function(BenchmarkId::new("pool", name), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    if is_max {
                        max_pool2d_forward(&s, &x, &mut y, None).unwrap()
                    } else {
                        avg_pool2d_forward(&s, &x, &mut y).unwrap()
                    }
                })
            })
        });
    }
    g.finish();
}

/// The Winograd kernel transforms a training step makes for each Winograd
/// conv (both write `16 * in_channels * filters` floats).
fn winograd_kernel(c: &mut Criterion) {
    use cnnc_runtime::kernels::winograd::{input_gradient_kernel_into, transform_kernel_into};
    let mut g = c.benchmark_group("winograd_kernel");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for threads in [1, 2] {
        let pool = pool_of(threads);
        for (cin, f) in [(64, 128), (128, 128), (128, 256), (256, 256)] {
            let w = rand_vec(9 * cin * f, 4);
            let mut u = vec![0.0f32; 16 * cin * f];
            g.throughput(Throughput::Elements(u.len() as u64));
            let name = format!("{cin}->{f}_{threads}_threads");
            g.bench_function(BenchmarkId::new("forward", &name), |bch| {
                bch.iter(|| pool.install(|| transform_kernel_into(&w, cin, f, &mut u)))
            });
            g.bench_function(BenchmarkId::new("input_gradient", &name), |bch| {
                bch.iter(|| pool.install(|| input_gradient_kernel_into(&w, cin, f, &mut u)))
            });
        }
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

criterion_group!(benches, conv, zoo, winograd_kernel, model);
criterion_main!(benches);
