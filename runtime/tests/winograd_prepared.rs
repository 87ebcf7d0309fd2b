//! Conv kernels prepared once as Winograd F(2x2, 3x3)
//! (`PreparedKernel::Winograd`, chosen by `InferenceParams::prepare` for
//! 3x3 stride-1 convs on large enough maps) compute the same fused
//! convolution `act(conv(x, kernel) + bias + residual)` as im2col + GEMM.
//!
//! The reference is a direct convolution in f64. Winograd and the GEMM
//! round differently, so each output is compared within a bound derived
//! from the magnitudes that enter it: `TOL_ULPS * eps_f32 * (Σ |x| |w| +
//! |bias| + |residual|)`, the sum over the output's `9 * in_channels` taps.
//! F(2x2, 3x3) evaluates each output as a sum of 16 products of transformed
//! values per channel, the input transform adding or subtracting up to 4
//! input values per row and column and the kernel transform averaging 3
//! taps, so its rounding error is a small multiple (tens) of `eps` times
//! that sum (Lavin & Gray 2016, sec. 5; Barabasz et al. 2020, "Error
//! analysis and improving the accuracy of Winograd convolution", table 1:
//! F(2x2, 3x3) errors are within 2x of direct convolution's in f32).

use cnnc_compiler::graph::ir::Conv2dAttrs;
use cnnc_compiler::graph::{lower, passes};
use cnnc_compiler::model::{Activation, Pads2d};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::kernels::conv::{
    fused_conv2d_forward, matmul_forward_prepared, prepared_winograd_applies, Conv2dShape,
    ConvKernel, PreparedKernel, PREPARED_WINOGRAD_MIN_SIZE,
    PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS, PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE,
};
use cnnc_runtime::kernels::gemm::{MatRef, Rhs};
use cnnc_runtime::kernels::winograd::PreparedWinograd;
use cnnc_runtime::kernels::KernelError;
use cnnc_runtime::params::{InferenceParams, ParamStore, PrepareOptions, WinogradPolicy};
use cnnc_runtime::tensor::Tensor;
use ndarray::IxDyn;

/// Allowed error, in units of `f32::EPSILON` times the sum of the
/// magnitudes entering an output (see the module docs).
const TOL_ULPS: f64 = 64.0;

/// Uniform values in `[-amp, amp)` from a 64-bit LCG (Knuth's constants).
fn lcg(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
        })
        .collect()
}

fn shape3x3(batch: usize, h: usize, w: usize, c: usize, k: usize, pads: Pads2d) -> Conv2dShape {
    let attrs = Conv2dAttrs {
        in_channels: c,
        filters: k,
        kernel_size: [3, 3],
        strides: [1, 1],
        pads,
        dilation_rate: [1, 1],
    };
    Conv2dShape::new(&attrs, batch, h, w).unwrap()
}

const SAME: Pads2d = Pads2d {
    top: 1,
    bottom: 1,
    left: 1,
    right: 1,
};

/// `act(conv(x, kernel) + bias + residual)` computed directly in f64 (HWIO
/// kernel, NHWC, zero padding), and per output the sum of the magnitudes of
/// the terms entering it.
fn direct(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let (c_n, k_n) = (s.in_channels, s.filters);
    let mut out = vec![0.0; s.output_len()];
    let mut mag = vec![0.0; s.output_len()];
    for n in 0..s.batch {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                let o = ((n * s.out_h + oy) * s.out_w + ox) * k_n;
                for k in 0..k_n {
                    let (mut sum, mut abs) = (0.0f64, 0.0f64);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy + ky) as isize - s.pad_top as isize;
                            let ix = (ox + kx) as isize - s.pad_left as isize;
                            if iy < 0 || ix < 0 || iy as usize >= s.in_h || ix as usize >= s.in_w {
                                continue;
                            }
                            let xi = ((n * s.in_h + iy as usize) * s.in_w + ix as usize) * c_n;
                            for c in 0..c_n {
                                let p = f64::from(x[xi + c])
                                    * f64::from(kernel[((ky * 3 + kx) * c_n + c) * k_n + k]);
                                sum += p;
                                abs += p.abs();
                            }
                        }
                    }
                    if let Some(b) = bias {
                        sum += f64::from(b[k]);
                        abs += f64::from(b[k]).abs();
                    }
                    if let Some(r) = residual {
                        sum += f64::from(r[o + k]);
                        abs += f64::from(r[o + k]).abs();
                    }
                    out[o + k] = match act {
                        Activation::Linear => sum,
                        Activation::Relu => sum.max(0.0),
                        Activation::Relu6 => sum.clamp(0.0, 6.0),
                        other => panic!("not used here: {other:?}"),
                    };
                    mag[o + k] = abs;
                }
            }
        }
    }
    (out, mag)
}

/// An im2col + GEMM prepared kernel owning (leaking, in this test) its data.
fn gemm_kernel(s: &Conv2dShape, kernel: &[f32]) -> PreparedKernel {
    let data: &'static [f32] = Box::leak(kernel.to_vec().into_boxed_slice());
    PreparedKernel::Gemm(Rhs::new(MatRef::row_major(data, s.patch_len(), s.filters)))
}

fn assert_within(what: &str, got: &[f32], want: &[f64], mag: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = TOL_ULPS * f64::from(f32::EPSILON) * m;
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: output {i}: {g} vs {w} (allowed {tol:e})"
        );
    }
}

/// Runs the fused conv with a prepared Winograd kernel and with a prepared
/// im2col + GEMM kernel, and checks both against the direct convolution.
fn check(s: &Conv2dShape, with_bias: bool, with_residual: bool, act: Activation) {
    let what = format!(
        "{}x{}x{}x{} -> {} pads {},{} bias {with_bias} residual {with_residual} {act:?}",
        s.batch, s.in_h, s.in_w, s.in_channels, s.filters, s.pad_top, s.pad_left
    );
    let x = lcg(1, s.input_len(), 1.0);
    let kernel = lcg(2, s.kernel_len(), 1.0);
    let bias = with_bias.then(|| lcg(3, s.filters, 2.0));
    let residual = with_residual.then(|| lcg(4, s.output_len(), 3.0));
    let (want, mag) = direct(s, &x, &kernel, bias.as_deref(), residual.as_deref(), act);
    // Outputs reach past 6 and below 0, so relu6 clamps on both sides.
    if act == Activation::Relu6 {
        assert!(want.contains(&6.0) && want.contains(&0.0));
    }

    let wino = PreparedKernel::Winograd(PreparedWinograd::new(&kernel, s.in_channels, s.filters));
    let mut got = vec![f32::NAN; s.output_len()];
    fused_conv2d_forward(
        s,
        &x,
        ConvKernel::Prepared(&wino),
        bias.as_deref(),
        residual.as_deref(),
        act,
        &mut got,
    )
    .unwrap();
    assert_within(&format!("winograd {what}"), &got, &want, &mag);

    let gemm = gemm_kernel(s, &kernel);
    let mut im2col = vec![f32::NAN; s.output_len()];
    fused_conv2d_forward(
        s,
        &x,
        ConvKernel::Prepared(&gemm),
        bias.as_deref(),
        residual.as_deref(),
        act,
        &mut im2col,
    )
    .unwrap();
    assert_within(&format!("im2col {what}"), &im2col, &want, &mag);
}

#[test]
fn prepared_winograd_matches_direct_convolution_with_fused_epilogues() {
    let valid = Pads2d::default();
    let uneven = Pads2d {
        top: 0,
        bottom: 2,
        left: 2,
        right: 0,
    };
    // Batch 1 on small maps runs the three-stage path over all tiles, larger
    // batches and maps tasks of tile rows; odd sizes leave half tiles.
    for s in [
        shape3x3(1, 14, 14, 16, 24, SAME),
        shape3x3(1, 7, 7, 8, 40, SAME),
        shape3x3(1, 13, 11, 9, 8, SAME),
        shape3x3(2, 9, 6, 8, 8, valid),
        shape3x3(3, 5, 9, 12, 17, SAME),
        shape3x3(5, 8, 8, 32, 16, SAME),
        shape3x3(2, 6, 7, 9, 8, uneven),
        shape3x3(4, 29, 31, 8, 33, SAME),
        shape3x3(1, 56, 56, 16, 16, SAME),
    ] {
        check(&s, false, false, Activation::Linear);
        check(&s, true, false, Activation::Relu);
        check(&s, true, true, Activation::Relu6);
        check(&s, false, true, Activation::Relu);
    }
}

/// `relu6(conv(x, kernel) + bias + residual)` with a prepared kernel, in a
/// pool of `threads` threads; `x` and `residual` may be longer than `s`
/// needs (their first images are used).
fn fused_on_pool(
    threads: usize,
    s: &Conv2dShape,
    kernel: &PreparedKernel,
    x: &[f32],
    bias: &[f32],
    residual: &[f32],
) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.output_len()];
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| {
            fused_conv2d_forward(
                s,
                &x[..s.input_len()],
                ConvKernel::Prepared(kernel),
                Some(bias),
                Some(&residual[..s.output_len()]),
                Activation::Relu6,
                &mut y,
            )
            .unwrap()
        });
    y
}

#[test]
fn prepared_winograd_runs_on_multi_thread_pools_with_the_same_bits() {
    let s = shape3x3(3, 14, 13, 16, 32, SAME);
    let x = lcg(5, s.input_len(), 1.0);
    let kernel = lcg(6, s.kernel_len(), 1.0);
    let bias = lcg(7, s.filters, 1.0);
    let residual = lcg(8, s.output_len(), 1.0);
    let wino = PreparedKernel::Winograd(PreparedWinograd::new(&kernel, s.in_channels, s.filters));
    let run = |threads: usize, batch: usize| {
        let s = Conv2dShape { batch, ..s };
        fused_on_pool(threads, &s, &wino, &x, &bias, &residual)
    };
    for batch in [1, 3] {
        let one = run(1, batch);
        assert_eq!(one, run(2, batch), "batch {batch}");
        assert_eq!(one, run(3, batch), "batch {batch}");
    }
    // Each image's outputs do not depend on the rest of the batch.
    let image = s.out_h * s.out_w * s.filters;
    assert_eq!(run(1, 1)[..], run(2, 3)[..image]);
}

#[test]
fn a_winograd_kernel_refuses_other_geometries() {
    let s = shape3x3(1, 8, 8, 8, 8, SAME);
    let kernel = lcg(1, s.kernel_len(), 1.0);
    let wino = PreparedKernel::Winograd(PreparedWinograd::new(&kernel, 8, 8));
    // Stride 2: not a Winograd F(2x2, 3x3) convolution.
    let attrs = Conv2dAttrs {
        in_channels: 8,
        filters: 8,
        kernel_size: [3, 3],
        strides: [2, 2],
        pads: SAME,
        dilation_rate: [1, 1],
    };
    let strided = Conv2dShape::new(&attrs, 1, 8, 8).unwrap();
    let x = vec![0.0; strided.input_len()];
    let mut y = vec![0.0; strided.output_len()];
    let err = fused_conv2d_forward(
        &strided,
        &x,
        ConvKernel::Prepared(&wino),
        None,
        None,
        Activation::Linear,
        &mut y,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::Geometry(_)), "{err:?}");
    // Other channel counts.
    let wide = shape3x3(1, 8, 8, 16, 8, SAME);
    let x = vec![0.0; wide.input_len()];
    let mut y = vec![0.0; wide.output_len()];
    let err = fused_conv2d_forward(
        &wide,
        &x,
        ConvKernel::Prepared(&wino),
        None,
        None,
        Activation::Linear,
        &mut y,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::Geometry(_)), "{err:?}");
    // A dense layer.
    let mut y = vec![0.0; 8];
    let err =
        matmul_forward_prepared(1, &[0.0; 8], &wino, None, Activation::Linear, &mut y).unwrap_err();
    assert!(matches!(err, KernelError::Geometry(_)), "{err:?}");
}

#[test]
fn the_choice_depends_on_the_output_size_and_channels_not_the_batch() {
    let n = PREPARED_WINOGRAD_MIN_SIZE;
    let small = PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE;
    let side = (PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS as f64).sqrt() as usize;
    for batch in [1, 32, 256] {
        // Large maps: any channels.
        assert!(prepared_winograd_applies(&shape3x3(
            batch, n, n, 512, 512, SAME
        )));
        // Small maps: only kernels up to the size limit.
        assert!(prepared_winograd_applies(&shape3x3(
            batch, small, small, side, side, SAME
        )));
        assert!(!prepared_winograd_applies(&shape3x3(
            batch,
            small,
            small,
            side,
            side + 1,
            SAME
        )));
        // Smaller maps: never.
        assert!(!prepared_winograd_applies(&shape3x3(
            batch,
            small - 1,
            n + 5,
            64,
            64,
            SAME
        )));
        // Too few channels for the transforms to pay off.
        assert!(!prepared_winograd_applies(&shape3x3(
            batch, 28, 28, 3, 64, SAME
        )));
    }
}

/// A residual network whose 3x3 convs fuse bias, residual add and relu6,
/// on odd-sized maps.
const NET: &str = "model net {
  input [13, 11, 8]
  stem = conv2d(16, 3, padding=same, activation=relu6)
  branch = stem -> conv2d(16, 3, padding=same) -> batch_normalization -> relu
    -> conv2d(16, 3, padding=same) -> batch_normalization
  sum = add(stem, branch) -> relu6 -> conv2d(8, 3) -> relu
  head = sum -> flatten -> dense(10, activation=softmax)
}";

#[test]
fn the_executor_runs_prepared_winograd_kernels() {
    let model = cnnc_compiler::check_source(NET).expect("valid spec");
    let (graph, _) = passes::optimize(lower::lower(&model), passes::Target::Inference);
    assert!(
        graph.nodes.iter().any(|n| matches!(
            n.op,
            cnnc_compiler::graph::ir::Op::FusedConv2d { residual: true, .. }
        )),
        "the residual add is fused into the conv"
    );
    let params = ParamStore::init(&graph, 3);
    let batch = 3;
    let x = Tensor::from_shape_vec(IxDyn(&[batch, 13, 11, 8]), lcg(9, batch * 13 * 11 * 8, 1.0))
        .unwrap();
    let prepare = |policy| {
        InferenceParams::prepare_with_winograd(
            &graph,
            params.clone(),
            PrepareOptions::default(),
            policy,
        )
        .unwrap()
    };
    let wino = prepare(WinogradPolicy::MinOutputSize(2));
    let im2col = prepare(WinogradPolicy::Off);
    let conv_kernels: Vec<_> = graph
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            cnnc_compiler::graph::ir::Op::FusedConv2d { kernel, .. }
            | cnnc_compiler::graph::ir::Op::Conv2d { kernel, .. } => Some(kernel),
            _ => None,
        })
        .collect();
    assert_eq!(conv_kernels.len(), 4);
    assert!(conv_kernels.iter().all(|&k| wino.is_winograd(k)));
    assert!(conv_kernels.iter().all(|&k| !im2col.is_winograd(k)));
    // 13 x 11 (and 11 x 9) maps with small kernels: the automatic choice
    // takes all four (see `prepared_winograd_applies`).
    let auto = prepare(WinogradPolicy::Auto);
    let expected = usize::from(PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE <= 9) * 4;
    assert_eq!(
        conv_kernels
            .iter()
            .filter(|&&k| auto.is_winograd(k))
            .count(),
        expected
    );

    let mut planned = Executor::for_inference(graph.clone());
    let a = planned.try_forward(&wino, &x, Mode::Inference).unwrap();
    let b = planned.try_forward(&im2col, &x, Mode::Inference).unwrap();
    let mut per_node = Executor::new(graph.clone());
    let c = per_node.try_forward(&wino, &x, Mode::Inference).unwrap();
    assert_eq!(a, c, "memory plan and per-node buffers differ");
    // Softmax outputs in [0, 1] summing to 1: a few eps of rounding per
    // layer, amplified by at most the logits' scale.
    let worst = a
        .iter()
        .zip(b.iter())
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(worst <= 1e-4, "winograd and im2col differ by {worst}");
}

/// Wall time per layer of the prepared im2col + GEMM and Winograd kernels
/// (a measurement, not a check): `cargo test --release -p cnnc-runtime
/// --test winograd_prepared -- --ignored --nocapture`. Medians of
/// interleaved runs. `WINO_SHAPES=b,hw,c,k;...` overrides the shapes,
/// `WINO_THREADS=1,2` the pool sizes.
#[test]
#[ignore]
fn prepared_winograd_timing() {
    let shapes: Vec<[usize; 4]> = match std::env::var("WINO_SHAPES") {
        Ok(v) => v
            .split(';')
            .map(|t| {
                let p: Vec<usize> = t.split(',').map(|n| n.trim().parse().unwrap()).collect();
                [p[0], p[1], p[2], p[3]]
            })
            .collect(),
        Err(_) => vec![
            // Fashion-MNIST CNN.
            [1, 14, 64, 128],
            [1, 14, 128, 128],
            [1, 7, 128, 256],
            [1, 7, 256, 256],
            [256, 14, 128, 128],
            [256, 7, 256, 256],
            // ResNet-50.
            [1, 56, 64, 64],
            [1, 28, 128, 128],
            [1, 14, 256, 256],
            [1, 7, 512, 512],
            [32, 56, 64, 64],
            [32, 28, 128, 128],
            [32, 14, 256, 256],
            [32, 7, 512, 512],
        ],
    };
    let threads: Vec<usize> = std::env::var("WINO_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        for &[batch, hw, c, k] in &shapes {
            let s = shape3x3(batch, hw, hw, c, k, SAME);
            let x = lcg(1, s.input_len(), 1.0);
            let kernel = lcg(2, s.kernel_len(), 1.0);
            let bias = lcg(3, k, 1.0);
            let gemm = gemm_kernel(&s, &kernel);
            let wino = PreparedKernel::Winograd(PreparedWinograd::new(&kernel, c, k));
            let mut y = vec![0.0; s.output_len()];
            let macs = s.rows() * s.patch_len() * k;
            let reps = (3e8 / macs as f64).clamp(3.0, 300.0) as usize;
            let (mut tg, mut tw) = (Vec::new(), Vec::new());
            pool.install(|| {
                let run = |pk: &PreparedKernel, y: &mut [f32]| {
                    let t0 = std::time::Instant::now();
                    fused_conv2d_forward(
                        &s,
                        &x,
                        ConvKernel::Prepared(pk),
                        Some(&bias),
                        None,
                        Activation::Relu,
                        y,
                    )
                    .unwrap();
                    t0.elapsed().as_secs_f64()
                };
                run(&gemm, &mut y);
                run(&wino, &mut y);
                for _ in 0..reps {
                    tg.push(run(&gemm, &mut y));
                    tw.push(run(&wino, &mut y));
                }
            });
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[v.len() / 2]
            };
            let (g, w) = (median(&mut tg), median(&mut tw));
            println!(
                "t{t} b{batch} {hw}x{hw}x{c}->{k}: im2col {:.3} ms ({:.0} GFLOP/s), winograd {:.3} ms, x{:.2}",
                g * 1e3,
                2.0 * macs as f64 / g / 1e9,
                w * 1e3,
                g / w
            );
        }
    }
}

/// Batch 1 on a small map is one block of rows: its im2col copy, product
/// and epilogue are each split over the pool; a 28x28 map is cut into
/// smaller blocks, two or more per thread. Same values as the direct
/// convolution and the same bits on 1, 2 and 3 threads.
#[test]
fn prepared_gemm_at_batch_1_has_the_same_bits_on_1_2_3_threads() {
    for (hw, c, k) in [(7, 256, 96), (14, 64, 128), (9, 8, 16), (28, 16, 32)] {
        let s = shape3x3(1, hw, hw, c, k, SAME);
        let x = lcg(11, s.input_len(), 1.0);
        let kernel = lcg(12, s.kernel_len(), 1.0);
        let bias = lcg(13, k, 2.0);
        let residual = lcg(14, s.output_len(), 3.0);
        let gemm = gemm_kernel(&s, &kernel);
        let run = |threads: usize| fused_on_pool(threads, &s, &gemm, &x, &bias, &residual);
        let one = run(1);
        let (want, mag) = direct(
            &s,
            &x,
            &kernel,
            Some(&bias),
            Some(&residual),
            Activation::Relu6,
        );
        assert_within(&format!("gemm b1 {hw}x{hw} {c}->{k}"), &one, &want, &mag);
        assert_eq!(one, run(2), "{hw}x{hw} {c}->{k}");
        assert_eq!(one, run(3), "{hw}x{hw} {c}->{k}");
    }
}
