//! GEMM throughput against the machine's measured FP32 FMA peak, on the
//! shapes the models use: `cargo bench -p cnnc-runtime --bench gemm [-- FILTER] [--threads 2] [--libs own,blocks,crate,mm]`.
//!
//! Every number is a best-of-rounds rate (GFLOP/s = 2 × multiply-adds / s)
//! and is also given as a share of the FMA peak measured in the same process
//! (an AVX-512 loop of 16 independent `vfmadd` chains, which covers the
//! 4-cycle latency × 2 FMA ports), so that results taken on a busy machine
//! stay comparable. Peak probes are interleaved with the shapes and the
//! highest probe is used.
//!
//! Columns:
//! - `own`: `gemm::matmul` (in-crate AVX-512 kernel; packs the right-hand
//!   side on every call), full `M`;
//! - `blocks`: the product split the way `conv.rs` calls it: forward and
//!   input gradient as `gemm::matmul_rhs` with a prepared right-hand side
//!   over row blocks (`96 Ki / patch` rows clamped to 56..504, a multiple of
//!   14); weight gradient as `gemm::matmul` over depth blocks of
//!   `384 Ki / patch` output pixels, accumulated (im2col itself excluded);
//! - `kept`: `gemm::matmul_rhs` on an `Rhs` packed outside the timing
//!   (weights cached across calls, as batch-1 inference should), full `M`;
//! - `cold`: as `kept`, but each call takes the next of enough packed
//!   copies of the weights to fill 512 MiB, so they come from memory, not
//!   cache, as a batch-1 model's weights do (every layer's are read once per
//!   pass);
//! - `coldc`: as `kept`, but each call writes the next of enough output
//!   buffers to fill 512 MiB, so `c` comes from memory;
//! - `unfused` / `fused`: `blocks` with bias + relu, as a separate pass per
//!   block or fused into the GEMM (`matmul_rhs_epilogue`);
//! - `hot`: the first conv block only, repeatedly (operands in cache);
//! - `crate`: the `gemm` crate 0.18 (what non-AVX-512 machines run);
//! - `mm`: the `matrixmultiply` crate 0.3 (AVX-512 build).
//!
//! With `--conv`, whole conv layers are timed instead (`conv2d_forward` with
//! bias + relu, `conv2d_backward` with all gradients; im2col, col2im and
//! epilogues included), on the same Fashion-MNIST / ResNet-50 layers.
//!
//! With `--pool`, max / average pooling forward and backward (one thread).
//!
//! With `--threads 2` the `own`/`blocks` columns run on a 2-thread rayon pool
//! (`own` through `matmul_par`, `blocks` over row blocks in parallel as
//! `conv.rs` does; `crate` with `Parallelism::Rayon(2)`), compared with the
//! 2-thread FMA peak.

use cnnc_runtime::kernels::gemm::{
    force_portable_gemm, matmul, matmul_par, matmul_rhs, matmul_rhs_epilogue, matmul_rhs_par,
    uses_avx512, Epilogue, EpilogueActivation, MatRef, Parallelism, Rhs,
};
use rayon::prelude::*;
use std::hint::black_box;

/// How the operands are laid out (the three GEMMs of a conv / dense layer).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `[m, k] × [k, n]`, both row-major (forward).
    Fwd,
    /// `aᵀ × b` with `a` row-major `[k, m]` (weight gradient: `colᵀ × dz`).
    TransA,
    /// `a × bᵀ` with `b` row-major `[n, k]` (input gradient: `dz × wᵀ`).
    TransB,
}

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    kind: Kind,
}

const fn c(name: &'static str, m: usize, k: usize, n: usize, kind: Kind) -> Case {
    Case {
        name,
        m,
        k,
        n,
        kind,
    }
}

/// Fashion-MNIST CNN (batch 128), ResNet-50 (batch 1) and dense shapes.
const CASES: &[Case] = &[
    // Fashion CNN, batch 128: conv layers as im2col GEMMs.
    c("fash conv1 28x28 k7 1->64", 128 * 784, 49, 64, Kind::Fwd),
    c("fash conv2 14x14 64->128", 128 * 196, 576, 128, Kind::Fwd),
    c("fash conv3 14x14 128->128", 128 * 196, 1152, 128, Kind::Fwd),
    c("fash conv4 7x7 128->256", 128 * 49, 1152, 256, Kind::Fwd),
    c("fash conv5 7x7 256->256", 128 * 49, 2304, 256, Kind::Fwd),
    c(
        "fash conv3 dW (colT x dz)",
        1152,
        128 * 196,
        128,
        Kind::TransA,
    ),
    c(
        "fash conv5 dW (colT x dz)",
        2304,
        128 * 49,
        256,
        Kind::TransA,
    ),
    c("fash conv3 dW one block", 1152, 322, 128, Kind::TransA),
    c("fash conv5 dW one block", 2304, 166, 256, Kind::TransA),
    c(
        "fash conv3 dX (dz x wT)",
        128 * 196,
        128,
        1152,
        Kind::TransB,
    ),
    c("fash conv5 dX (dz x wT)", 128 * 49, 256, 2304, Kind::TransB),
    c("fash dense1 b128", 128, 2304, 128, Kind::Fwd),
    // ResNet-50, batch 1 (M = H * W of the stage).
    c("r50 stem 7x7s2 3->64", 12544, 147, 64, Kind::Fwd),
    c("r50 s1 1x1 64->64", 3136, 64, 64, Kind::Fwd),
    c("r50 s1 3x3 64->64", 3136, 576, 64, Kind::Fwd),
    c("r50 s1 1x1 64->256", 3136, 64, 256, Kind::Fwd),
    c("r50 s1 1x1 256->64", 3136, 256, 64, Kind::Fwd),
    c("r50 s2 3x3 128->128", 784, 1152, 128, Kind::Fwd),
    c("r50 s2 1x1 128->512", 784, 128, 512, Kind::Fwd),
    c("r50 s2 1x1 512->128", 784, 512, 128, Kind::Fwd),
    c("r50 s3 3x3 256->256", 196, 2304, 256, Kind::Fwd),
    c("r50 s3 1x1 256->1024", 196, 256, 1024, Kind::Fwd),
    c("r50 s3 1x1 1024->256", 196, 1024, 256, Kind::Fwd),
    c("r50 s4 3x3 512->512", 49, 4608, 512, Kind::Fwd),
    c("r50 s4 1x1 512->2048", 49, 512, 2048, Kind::Fwd),
    c("r50 s4 1x1 2048->512", 49, 2048, 512, Kind::Fwd),
    // Xception, batch 1: the separable convs' pointwise (1x1) products.
    c("xc b2 1x1 147x147 64->128", 21609, 64, 128, Kind::Fwd),
    c("xc b2 1x1 147x147 128->128", 21609, 128, 128, Kind::Fwd),
    c("xc b3 1x1 74x74 128->256", 5476, 128, 256, Kind::Fwd),
    c("xc b3 1x1 74x74 256->256", 5476, 256, 256, Kind::Fwd),
    c("xc b4 1x1 37x37 728->728", 1369, 728, 728, Kind::Fwd),
    c("xc mid 1x1 19x19 728->728", 361, 728, 728, Kind::Fwd),
    c("xc b14 1x1 10x10 1024->1536", 100, 1024, 1536, Kind::Fwd),
    c("xc b14 1x1 10x10 1536->2048", 100, 1536, 2048, Kind::Fwd),
    c("M=3136 K=2304 N=256", 3136, 2304, 256, Kind::Fwd),
    c("M=3136 K=4608 N=512", 3136, 4608, 512, Kind::Fwd),
    c("M=3136 K=2048 N=2048", 3136, 2048, 2048, Kind::Fwd),
    // Batch-1 dense (GEMV: memory bound; GB/s of the weights also shown).
    c("dense b1 2304->128", 1, 2304, 128, Kind::Fwd),
    c("dense b1 2048->1000", 1, 2048, 1000, Kind::Fwd),
    c("dense b1 4096->4096", 1, 4096, 4096, Kind::Fwd),
];

/// 16 independent FMA chains per thread over `iters` steps; returns a value
/// depending on every chain so nothing is optimized away.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 16];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU seconds used by the calling thread.
fn thread_cpu_now() -> f64 {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer; glibc is linked by std on Linux.
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// FMA peak in GFLOP/s over `threads` threads running at once (each thread
/// timed by its own CPU clock, best of 10 rounds, rates summed).
fn fma_peak(threads: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        const ITERS: usize = 1_000_000; // 0.5 GFLOP per thread, ~2 ms at peak
        let one = || {
            let mut best = 0.0f64;
            for _ in 0..10 {
                let t = thread_cpu_now();
                // SAFETY: AVX-512F checked above.
                black_box(unsafe { fma_chains(black_box(ITERS)) });
                let secs = thread_cpu_now() - t;
                best = best.max((ITERS * 16 * 16 * 2) as f64 / secs / 1e9);
            }
            best
        };
        return std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(one)).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
    }
    f64::NAN
}

/// One short FMA probe on `threads` threads at once (GFLOP/s, summed).
fn probe(threads: usize) -> f64 {
    const ITERS: usize = 200_000;
    let one = || {
        let t = thread_cpu_now();
        // SAFETY: only called when AVX-512F is available (see `fma_peak`).
        black_box(unsafe { fma_chains(black_box(ITERS)) });
        (ITERS * 16 * 16 * 2) as f64 / (thread_cpu_now() - t) / 1e9
    };
    if threads == 1 {
        return one();
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(one)).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// Rate of `f` in GFLOP/s and as a share of the FMA peak, each the median over
/// `rounds` rounds of ~5 ms, every round bracketed by two short FMA probes
/// (on `threads` threads): the share is the round's rate over the mean of
/// its two probes, so clock changes caused by other load on the machine
/// cancel out. Time is CPU time (time spent descheduled by other load is
/// not counted): with several threads, that of the busiest thread, and the
/// best round instead of the median.
fn measure(flops: f64, rounds: usize, pool: &rayon::ThreadPool, mut f: impl FnMut()) -> (f64, f64) {
    let threads = pool.current_num_threads();
    // Busy CPU seconds of the critical path: the calling thread and each
    // worker are timed by their own CPU clocks and the largest counts (a
    // serial product on two threads thus shows half the 2-thread peak).
    let clocks = || {
        let mut v = pool.broadcast(|_| thread_cpu_now());
        v.push(thread_cpu_now());
        v
    };
    let busy =
        |t0: &[f64], t1: &[f64]| t0.iter().zip(t1).map(|(a, b)| b - a).fold(0.0f64, f64::max);
    f();
    let t0 = clocks();
    f();
    let once = busy(&t0, &clocks()).max(1e-7);
    let iters = ((0.005 / once).ceil() as usize).max(1);
    let have_probe = is_x86_feature_detected!("avx512f");
    let (mut rates, mut shares) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let p1 = if have_probe { probe(threads) } else { f64::NAN };
        let t0 = clocks();
        for _ in 0..iters {
            f();
        }
        let secs = busy(&t0, &clocks()) / iters as f64;
        let p2 = if have_probe { probe(threads) } else { f64::NAN };
        let g = flops / secs / 1e9;
        rates.push(g);
        shares.push(g / (0.5 * (p1 + p2)));
    }
    if threads > 1 {
        // A worker descheduled by other load stalls the whole product (the
        // other one waits, spinning): report the best round, which
        // approximates an idle machine.
        let best = |v: &[f64]| v.iter().cloned().fold(0.0f64, f64::max);
        return (best(&rates), best(&shares));
    }
    (median(&mut rates), median(&mut shares))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Deterministic pseudo-random values in [-1, 1).
fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Rows per GEMM call in `conv.rs`'s forward (`block_rows`).
fn conv_block_rows(k: usize) -> usize {
    let rows = (96 * 1024 / k.max(1)).clamp(56, 504);
    rows / 14 * 14
}

/// Output pixels per weight-gradient GEMM in `conv.rs` (`dw_block_rows`).
fn conv_dw_block_rows(patch: usize) -> usize {
    let rows = (384 * 1024 / patch.max(1)).clamp(56, 504);
    rows / 14 * 14
}

/// A conv layer of the models: (name, batch, spatial size, in_channels,
/// filters, kernel).
const CONVS: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("fash conv1 28x28 k7 1->64", 128, 28, 1, 64, 7),
    ("fash conv2 14x14 64->128", 128, 14, 64, 128, 3),
    ("fash conv3 14x14 128->128", 128, 14, 128, 128, 3),
    ("fash conv4 7x7 128->256", 128, 7, 128, 256, 3),
    ("fash conv5 7x7 256->256", 128, 7, 256, 256, 3),
    ("fash conv3 14x14 128->128 b32", 32, 14, 128, 128, 3),
    ("fash conv5 7x7 256->256 b32", 32, 7, 256, 256, 3),
    ("r50 s1 3x3 56x56 64->64", 1, 56, 64, 64, 3),
    ("r50 s1 1x1 56x56 64->256", 1, 56, 64, 256, 1),
    ("r50 s2 3x3 28x28 128->128", 1, 28, 128, 128, 3),
    ("r50 s3 3x3 14x14 256->256", 1, 14, 256, 256, 3),
    ("r50 s4 3x3 7x7 512->512", 1, 7, 512, 512, 3),
    ("r50 s4 1x1 7x7 2048->512", 1, 7, 2048, 512, 1),
];

/// Whole conv layers (`conv2d_forward` with bias + relu, and
/// `conv2d_backward` for all three gradients), im2col and epilogues included.
fn conv_mode(filter: Option<&str>, threads: usize, rounds: usize) {
    use cnnc_compiler::graph::ir::Conv2dAttrs;
    use cnnc_compiler::model::{Activation, Pads2d};
    use cnnc_runtime::kernels::{conv2d_backward, conv2d_forward, Conv2dShape};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!(
        "conv layers: {threads} thread(s), avx512 kernel: {}, rounds {rounds}",
        uses_avx512()
    );
    println!("{:<30} {:>16} {:>16}", "layer", "forward", "backward");
    let mut shares = (Vec::new(), Vec::new());
    for &(name, batch, hw, cin, f, k) in CONVS {
        if let Some(fl) = filter {
            if !fl.split(',').any(|part| name.contains(part)) {
                continue;
            }
        }
        let p = (k - 1) / 2;
        let attrs = Conv2dAttrs {
            in_channels: cin,
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
        let s = Conv2dShape::new(&attrs, batch, hw, hw).expect("valid layer");
        let x = rand_vec(s.input_len(), 1);
        let w: Vec<f32> = rand_vec(s.kernel_len(), 2)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let bias = vec![0.01f32; f];
        let mut y = vec![0.0f32; s.output_len()];
        let flops = 2.0 * s.macs() as f64;
        let fwd = pool.install(|| {
            measure(flops, rounds, &pool, || {
                conv2d_forward(&s, &x, &w, Some(&bias), Activation::Relu, &mut y).expect("forward")
            })
        });
        let dy0 = rand_vec(s.output_len(), 3);
        let mut dy = dy0.clone();
        let mut dx = vec![0.0f32; s.input_len()];
        let mut dk = vec![0.0f32; s.kernel_len()];
        let mut db = vec![0.0f32; f];
        let bwd = pool.install(|| {
            measure(2.0 * flops, rounds, &pool, || {
                dy.copy_from_slice(&dy0);
                conv2d_backward(
                    &s,
                    &x,
                    &w,
                    &y,
                    Activation::Relu,
                    &mut dy,
                    Some(&mut dx),
                    Some(&mut dk),
                    Some(&mut db),
                )
                .expect("backward")
            })
        });
        println!(
            "{:<30} {:>7.1} ({:>3.0}%) {:>7.1} ({:>3.0}%)",
            name,
            fwd.0,
            100.0 * fwd.1,
            bwd.0,
            100.0 * bwd.1
        );
        shares.0.push(fwd.1);
        shares.1.push(bwd.1);
    }
    let gm =
        |v: &[f64]| 100.0 * (v.iter().map(|x| x.ln()).sum::<f64>() / v.len().max(1) as f64).exp();
    println!(
        "{:<30} {:>15.1}% {:>15.1}%",
        "geometric mean % of peak",
        gm(&shares.0),
        gm(&shares.1)
    );
}

/// Pooling layers: (name, batch, spatial size, channels, pool, stride, pad).
const POOLS: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("fash pool1 28x28x64 2/2", 128, 28, 64, 2, 2, 0),
    ("fash pool2 14x14x128 2/2", 128, 14, 128, 2, 2, 0),
    ("fash pool3 7x7x256 2/2", 128, 7, 256, 2, 2, 0),
    ("r50 pool 112x112x64 3/2", 1, 112, 64, 3, 2, 1),
    ("r50 pool 112x112x64 3/2 b8", 8, 112, 64, 3, 2, 1),
];

/// Max / average pooling forward and backward, one thread: milliseconds per
/// call and GB/s of input + output traffic (pooling is bandwidth bound).
fn pool_mode(filter: Option<&str>, rounds: usize) {
    use cnnc_compiler::graph::ir::Pool2dAttrs;
    use cnnc_compiler::model::Pads2d;
    use cnnc_runtime::kernels::{
        avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward,
        Pool2dShape,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    println!("pooling, 1 thread: ms per call (GB/s of x + y [+ argmax])");
    println!(
        "{:<30} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "layer", "max fwd", "max fwd+argmax", "max bwd", "avg fwd", "avg bwd"
    );
    for &(name, batch, hw, c, k, st, pad) in POOLS {
        if let Some(fl) = filter {
            if !fl.split(',').any(|part| name.contains(part)) {
                continue;
            }
        }
        let attrs = Pool2dAttrs {
            pool_size: [k, k],
            strides: [st, st],
            pads: Pads2d {
                top: pad,
                bottom: pad,
                left: pad,
                right: pad,
            },
        };
        let s = Pool2dShape::new(&attrs, batch, hw, hw, c).expect("valid pool");
        let x = rand_vec(s.input_len(), 5);
        let mut y = vec![0.0f32; s.output_len()];
        let mut am = vec![0u32; s.output_len()];
        let dy = rand_vec(s.output_len(), 6);
        let mut dx = vec![0.0f32; s.input_len()];
        let (xi, yo) = (4.0 * s.input_len() as f64, 4.0 * s.output_len() as f64);
        // `measure` reports "GFLOP/s" of the given work: pass bytes, so the
        // rate reads as GB/s; time = bytes / rate.
        macro_rules! run {
            ($bytes:expr, $body:expr) => {{
                let bytes = $bytes;
                let (gbs, _) = pool.install(|| measure(bytes, rounds, &pool, || $body));
                (bytes / gbs / 1e6, gbs)
            }};
        }
        let r = [
            run!(
                xi + yo,
                max_pool2d_forward(&s, &x, &mut y, None).expect("max")
            ),
            run!(
                xi + 2.0 * yo,
                max_pool2d_forward(&s, &x, &mut y, Some(&mut am)).expect("max")
            ),
            run!(
                xi + 2.0 * yo,
                max_pool2d_backward(&s, &am, &dy, &mut dx).expect("max bwd")
            ),
            run!(xi + yo, avg_pool2d_forward(&s, &x, &mut y).expect("avg")),
            run!(
                xi + yo,
                avg_pool2d_backward(&s, &dy, &mut dx).expect("avg bwd")
            ),
        ];
        print!("{name:<30}");
        for (ms, gbs) in r {
            print!(" {ms:>7.3} ({gbs:>5.1})");
        }
        println!();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter: Option<String> = None;
    let mut threads = 1usize;
    let mut libs = vec!["own", "blocks", "crate", "mm"];
    let mut rounds = 9usize;
    let mut conv = false;
    let mut pool_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--conv" => conv = true,
            "--pool" => pool_only = true,
            "--threads" => threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(9),
            "--libs" => {
                libs = it
                    .next()
                    .map(|v| {
                        v.split(',')
                            .map(|s| -> &'static str { s.to_string().leak() })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            s if !s.starts_with('-') => filter = Some(s.to_string()),
            _ => {}
        }
    }
    if conv {
        return conv_mode(filter.as_deref(), threads, rounds);
    }
    if pool_only {
        return pool_mode(filter.as_deref(), rounds);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!(
        "gemm bench: {threads} thread(s), avx512 kernel: {}, rounds {rounds}",
        uses_avx512()
    );
    let mut peak = fma_peak(threads);
    let mut probes = vec![peak];
    println!("FMA peak probe: {peak:.1} GFLOP/s ({threads} thread(s))");
    print!("{:<30} {:>6} {:>6} {:>6}", "shape", "M", "K", "N");
    for l in &libs {
        print!(" {:>14}", l);
    }
    println!();
    let mut rows = Vec::new();
    for case in CASES {
        if let Some(f) = &filter {
            if !f.split(',').any(|part| case.name.contains(part)) {
                continue;
            }
        }
        let p = fma_peak(threads);
        probes.push(p);
        peak = peak.max(p);
        let (m, k, n) = (case.m, case.k, case.n);
        let ad = rand_vec(m * k, 1);
        let bd = rand_vec(k * n, 2);
        let a = match case.kind {
            Kind::TransA => MatRef::row_major(&ad, k, m).t(),
            _ => MatRef::row_major(&ad, m, k),
        };
        let b = match case.kind {
            Kind::TransB => MatRef::row_major(&bd, n, k).t(),
            _ => MatRef::row_major(&bd, k, n),
        };
        let mut cm = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let mut res = Vec::new();
        for &lib in &libs {
            let g = match lib {
                "own" => {
                    force_portable_gemm(false);
                    pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            if threads > 1 {
                                matmul_par(a, b, &mut cm, n, false);
                            } else {
                                matmul(a, b, &mut cm, n, false, Parallelism::None);
                            }
                        })
                    })
                }
                "blocks" if case.kind == Kind::TransA => {
                    // Weight gradient as conv.rs computes it: the depth (output
                    // pixels) in blocks of `dw_block_rows`, accumulated.
                    force_portable_gemm(false);
                    let block = conv_dw_block_rows(m);
                    measure(flops, rounds, &pool, || {
                        let mut r0 = 0;
                        while r0 < k {
                            let rows = block.min(k - r0);
                            let ab = MatRef::row_major(&ad[r0 * m..(r0 + rows) * m], rows, m).t();
                            let bb = MatRef::row_major(&bd[r0 * n..(r0 + rows) * n], rows, n);
                            matmul(ab, bb, &mut cm, n, r0 > 0, Parallelism::None);
                            r0 += rows;
                        }
                    })
                }
                "kept" | "cold" => {
                    // Weights packed outside the timing (`Rhs::new`), whole
                    // product per call: batch-1 inference with cached
                    // packing; `matmul_rhs_par` with several threads. `cold`:
                    // the calls cycle through copies of the packed weights
                    // filling 512 MiB, so they come from memory.
                    force_portable_gemm(false);
                    let copies = if lib == "cold" {
                        (512usize << 20).div_ceil(4 * k * n).max(2)
                    } else {
                        1
                    };
                    let rhs: Vec<Rhs> = (0..copies).map(|_| Rhs::new(b)).collect();
                    let epi = Epilogue::default();
                    let mut next = 0usize;
                    pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            let r = &rhs[next % copies];
                            next += 1;
                            if threads > 1 {
                                matmul_rhs_par(a, r, &mut cm, n, false, &epi);
                            } else {
                                matmul_rhs(a, r, &mut cm, n, false);
                            }
                        })
                    })
                }
                "coldc" => {
                    // As `kept`, but each call writes the next of enough
                    // output buffers to fill 512 MiB, so `c` comes from
                    // memory (its lines are read for ownership), as a
                    // batch-1 model's layers write buffers last touched a
                    // whole pass earlier.
                    force_portable_gemm(false);
                    let copies = (512usize << 20).div_ceil(4 * m * n).max(2);
                    let mut cs: Vec<Vec<f32>> = (0..copies).map(|_| vec![1.0f32; m * n]).collect();
                    let rhs = Rhs::new(b);
                    let epi = Epilogue::default();
                    let mut next = 0usize;
                    pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            let c = &mut cs[next % copies];
                            next += 1;
                            if threads > 1 {
                                matmul_rhs_par(a, &rhs, c, n, false, &epi);
                            } else {
                                matmul_rhs(a, &rhs, c, n, false);
                            }
                        })
                    })
                }
                "hot" => {
                    // The first conv block only, over and over: `a`, `b`
                    // and `c` stay in cache (an upper bound for `blocks`).
                    force_portable_gemm(false);
                    let rhs = Rhs::new(b);
                    let block = match case.kind {
                        Kind::TransB => conv_block_rows(n),
                        _ => conv_block_rows(k),
                    }
                    .min(m);
                    let ab = MatRef { rows: block, ..a };
                    let f = 2.0 * (block * k * n) as f64;
                    measure(f, rounds, &pool, || {
                        matmul_rhs(ab, &rhs, &mut cm[..block * n], n, false)
                    })
                }
                "unfused" | "fused" => {
                    // Forward blocks with bias + relu: a separate pass over
                    // each finished block (as conv.rs's epilogue closure) or
                    // fused into the GEMM's stores (`matmul_rhs_epilogue`).
                    force_portable_gemm(false);
                    let rhs = Rhs::new(b);
                    let block = conv_block_rows(k);
                    let bias: Vec<f32> = (0..n).map(|j| 0.01 * j as f32).collect();
                    let fused = lib == "fused";
                    let epi = Epilogue {
                        bias: Some(&bias),
                        residual: None,
                        activation: EpilogueActivation::Relu,
                    };
                    pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            cm.par_chunks_mut(block * n)
                                .enumerate()
                                .for_each(|(bi, cb)| {
                                    let rows = cb.len() / n;
                                    let ab = MatRef {
                                        data: &a.data[bi * block * a.row_stride..],
                                        rows,
                                        ..a
                                    };
                                    if fused {
                                        matmul_rhs_epilogue(ab, &rhs, cb, n, false, &epi);
                                    } else {
                                        matmul_rhs(ab, &rhs, cb, n, false);
                                        for row in cb.chunks_exact_mut(n) {
                                            for (v, &bb) in row.iter_mut().zip(&bias) {
                                                *v = (*v + bb).max(0.0);
                                            }
                                        }
                                    }
                                })
                        })
                    })
                }
                "blocks" => {
                    // Forward / input gradient as conv.rs computes them: a
                    // prepared rhs and row blocks of `block_rows` (parallel
                    // over blocks with several threads).
                    force_portable_gemm(false);
                    let rhs = Rhs::new(b);
                    let block = match case.kind {
                        Kind::TransB => conv_block_rows(n),
                        _ => conv_block_rows(k),
                    };
                    pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            cm.par_chunks_mut(block * n)
                                .enumerate()
                                .for_each(|(bi, cb)| {
                                    let rows = cb.len() / n;
                                    let ab = MatRef {
                                        data: &a.data[bi * block * a.row_stride..],
                                        rows,
                                        ..a
                                    };
                                    matmul_rhs(ab, &rhs, cb, n, false);
                                })
                        })
                    })
                }
                "crate" => {
                    force_portable_gemm(true);
                    let par = if threads > 1 {
                        Parallelism::Rayon(threads)
                    } else {
                        Parallelism::None
                    };
                    let r = pool.install(|| {
                        measure(flops, rounds, &pool, || {
                            matmul(a, b, &mut cm, n, false, par)
                        })
                    });
                    force_portable_gemm(false);
                    r
                }
                "mm" => measure(flops, rounds, &pool, || unsafe {
                    // SAFETY: the views lie inside their slices; `cm` is
                    // `[m, n]` row-major and does not alias them.
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.data.as_ptr(),
                        a.row_stride as isize,
                        a.col_stride as isize,
                        b.data.as_ptr(),
                        b.row_stride as isize,
                        b.col_stride as isize,
                        0.0,
                        cm.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }),
                _ => (f64::NAN, f64::NAN),
            };
            black_box(&cm);
            res.push(g);
        }
        print!("{:<30} {:>6} {:>6} {:>6}", case.name, m, k, n);
        for (g, share) in &res {
            print!(" {:>6.1} ({:>3.0}%)", g, 100.0 * share);
        }
        if m == 1 {
            // Weight bytes streamed per second.
            let gbs = res
                .first()
                .map(|(g, _)| g * 1e9 / flops * (k * n * 4) as f64 / 1e9);
            if let Some(gbs) = gbs {
                print!("  [{gbs:.1} GB/s weights]");
            }
        }
        println!();
        rows.push(res);
    }
    let lo = probes.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "FMA peak probes (10 x 2 ms): max {peak:.1}, min {lo:.1} GFLOP/s over {} probes; \
         % = median of (rate / adjacent probes)",
        probes.len()
    );
    if !rows.is_empty() {
        print!("{:<51}", "geometric mean % of peak");
        for i in 0..libs.len() {
            let logs: f64 = rows.iter().map(|r| r[i].1.ln()).sum();
            print!("        {:>5.1}%", 100.0 * (logs / rows.len() as f64).exp());
        }
        println!();
    }
}
