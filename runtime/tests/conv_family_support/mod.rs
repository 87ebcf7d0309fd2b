//! Shared helpers for the `conv_family_*` tests: seeded data, naive f64
//! reference loops for dilated conv2d, depthwise conv2d and transposed conv2d
//! (written directly from their definitions), finite differences, and
//! TensorFlow's `same` padding rule.
#![allow(dead_code)]

use cnnc_compiler::graph::ir::{Conv2dAttrs, Conv2dTransposeAttrs, DepthwiseConv2dAttrs};
use cnnc_compiler::model::{Activation, Pads2d};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in `[-1, 1)` from a seeded generator.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// TensorFlow `same` padding of one axis for a (dilated) kernel extent
/// `k_eff`: `out = ceil(n / s)`, total `max((out - 1) * s + k_eff - n, 0)`,
/// the odd pixel after. Returns `(before, after)`.
pub fn same_pads(n: usize, k_eff: usize, s: usize) -> (usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k_eff).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// `Pads2d` for `same` (or zero for `valid`) padding of an `h × w` input.
pub fn pads2d(
    same: bool,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> Pads2d {
    if !same {
        return Pads2d::default();
    }
    let (top, bottom) = same_pads(h, d[0] * (k[0] - 1) + 1, s[0]);
    let (left, right) = same_pads(w, d[1] * (k[1] - 1) + 1, s[1]);
    Pads2d {
        top,
        bottom,
        left,
        right,
    }
}

/// Asserts `|a - b| <= tol * max(1, |b|)` element-wise.
#[track_caller]
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let bound = tol * y.abs().max(1.0);
        assert!(
            (x - y).abs() <= bound,
            "{what}[{i}]: got {x}, expected {y} (tol {bound})"
        );
    }
}

/// Largest `|a - b|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Applies an element-wise activation to one value (f64).
pub fn act_ref(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Linear => x,
        Activation::Relu => x.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha as f64 * (x.exp() - 1.0)
            }
        }
        Activation::LeakyRelu { negative_slope } => {
            if x >= 0.0 {
                x
            } else {
                negative_slope as f64 * x
            }
        }
        Activation::Softmax => panic!("softmax is not element-wise"),
    }
}

/// `dy ⊙ act'(y)` from the output (relu, tanh, sigmoid, linear).
pub fn dz_from(act: Activation, dy: &[f32], y: &[f32]) -> Vec<f32> {
    dy.iter()
        .zip(y)
        .map(|(&g, &v)| match act {
            Activation::Linear => g,
            Activation::Relu => {
                if v > 0.0 {
                    g
                } else {
                    0.0
                }
            }
            Activation::Tanh => g * (1.0 - v * v),
            Activation::Sigmoid => g * v * (1.0 - v),
            other => panic!("dz_from: {other:?} not supported"),
        })
        .collect()
}

/// `Σ w_i y_i` in f64 (the scalar loss of the gradient checks).
pub fn weighted_sum(y: &[f32], w: &[f32]) -> f64 {
    y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Central-difference check of `grad` at up to `samples` evenly spaced
/// indices: `|fd - grad_i| <= atol + rtol * |grad_i|`.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn check_fd(
    what: &str,
    v: &[f32],
    grad: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
    eps: f32,
    samples: usize,
    rtol: f64,
    atol: f64,
) {
    assert_eq!(v.len(), grad.len(), "{what}: gradient length");
    let step = (v.len() / samples.max(1)).max(1);
    let mut p = v.to_vec();
    let mut checked = 0;
    let mut nonzero = 0;
    for i in (0..v.len()).step_by(step) {
        p[i] = v[i] + eps;
        let lp = loss(&p);
        p[i] = v[i] - eps;
        let lm = loss(&p);
        p[i] = v[i];
        let fd = (lp - lm) / (2.0 * eps as f64);
        let an = grad[i] as f64;
        assert!(
            (fd - an).abs() <= atol + rtol * an.abs(),
            "{what}[{i}]: finite difference {fd}, analytic {an}"
        );
        checked += 1;
        nonzero += usize::from(an.abs() > 1e-3);
    }
    assert!(checked > 0, "{what}: nothing checked");
    assert!(nonzero > 0, "{what}: every checked gradient is zero");
}

/// Spatial geometry shared by the naive references (per axis `[h, w]`).
#[derive(Clone, Copy, Debug)]
pub struct Geo {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub k: [usize; 2],
    pub s: [usize; 2],
    pub d: [usize; 2],
    /// Padding before (conv, depthwise) or crop at the start (transposed).
    pub before: [usize; 2],
}

impl Geo {
    /// Input pixel of output pixel `o` at tap `t` along `axis` (conv and
    /// depthwise): `o * s + t * d - before`, if inside `0..size`.
    pub fn tap(&self, axis: usize, o: usize, t: usize) -> Option<usize> {
        let size = [self.h, self.w][axis];
        let i = (o * self.s[axis] + t * self.d[axis]) as isize - self.before[axis] as isize;
        (i >= 0 && (i as usize) < size).then_some(i as usize)
    }
}

/// Naive dilated conv2d: x `[n, h, w, c]`, k `[kh, kw, c, f]`, output
/// `[n, oh, ow, f]`; returns `(y, dx, dk, db)` where the gradients are for
/// the given `dz` (d loss / d pre-activation), all in f64.
#[allow(clippy::too_many_arguments)]
pub fn naive_conv(
    g: &Geo,
    c: usize,
    f: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    k: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    dz: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let [kh, kw] = g.k;
    let mut y = vec![0.0f32; g.n * oh * ow * f];
    let mut dx = vec![0.0f64; x.len()];
    let mut dk = vec![0.0f64; k.len()];
    let mut db = vec![0.0f64; f];
    for n in 0..g.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for fo in 0..f {
                    let yi = ((n * oh + oy) * ow + ox) * f + fo;
                    let gz = dz.map_or(0.0, |d| d[yi] as f64);
                    db[fo] += gz;
                    let mut acc = b.map_or(0.0, |b| b[fo] as f64);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (Some(iy), Some(ix)) = (g.tap(0, oy, ky), g.tap(1, ox, kx)) else {
                                continue;
                            };
                            for ci in 0..c {
                                let xi = ((n * g.h + iy) * g.w + ix) * c + ci;
                                let ki = ((ky * kw + kx) * c + ci) * f + fo;
                                acc += x[xi] as f64 * k[ki] as f64;
                                dx[xi] += gz * k[ki] as f64;
                                dk[ki] += gz * x[xi] as f64;
                            }
                        }
                    }
                    y[yi] = act_ref(act, acc) as f32;
                }
            }
        }
    }
    (y, cast(dx), cast(dk), cast(db))
}

/// Naive depthwise conv2d: x `[n, h, w, c]`, k `[kh, kw, c, dm]`, output
/// `[n, oh, ow, c * dm]` (channel `c * dm + m`); returns `(y, dx, dk, db)`.
#[allow(clippy::too_many_arguments)]
pub fn naive_depthwise(
    g: &Geo,
    c: usize,
    dm: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    k: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    dz: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let [kh, kw] = g.k;
    let oc = c * dm;
    let mut y = vec![0.0f32; g.n * oh * ow * oc];
    let mut dx = vec![0.0f64; x.len()];
    let mut dk = vec![0.0f64; k.len()];
    let mut db = vec![0.0f64; oc];
    for n in 0..g.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ci in 0..c {
                    for m in 0..dm {
                        let o = ci * dm + m;
                        let yi = ((n * oh + oy) * ow + ox) * oc + o;
                        let gz = dz.map_or(0.0, |d| d[yi] as f64);
                        db[o] += gz;
                        let mut acc = b.map_or(0.0, |b| b[o] as f64);
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (Some(iy), Some(ix)) = (g.tap(0, oy, ky), g.tap(1, ox, kx))
                                else {
                                    continue;
                                };
                                let xi = ((n * g.h + iy) * g.w + ix) * c + ci;
                                let ki = ((ky * kw + kx) * c + ci) * dm + m;
                                acc += x[xi] as f64 * k[ki] as f64;
                                dx[xi] += gz * k[ki] as f64;
                                dk[ki] += gz * x[xi] as f64;
                            }
                        }
                        y[yi] = act_ref(act, acc) as f32;
                    }
                }
            }
        }
    }
    (y, cast(dx), cast(dk), cast(db))
}

/// Naive transposed conv2d, by its scatter definition: x `[n, h, w, cin]`,
/// k `[kh, kw, f, cin]`, output `[n, oh, ow, f]` with
/// `y[n, i*s + t*d - crop, f] += x[n, i, c] * k[t, f, c]` (outside `0..out`
/// dropped), then bias and activation. Returns `(y, dx, dk, db)` for `dz`.
#[allow(clippy::too_many_arguments)]
pub fn naive_transpose(
    g: &Geo,
    cin: usize,
    f: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    k: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    dz: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let [kh, kw] = g.k;
    let mut z = vec![0.0f64; g.n * oh * ow * f];
    let mut dx = vec![0.0f64; x.len()];
    let mut dk = vec![0.0f64; k.len()];
    let mut db = vec![0.0f64; f];
    let out = |axis: usize, i: usize, t: usize, size: usize| {
        let o = (i * g.s[axis] + t * g.d[axis]) as isize - g.before[axis] as isize;
        (o >= 0 && (o as usize) < size).then_some(o as usize)
    };
    for n in 0..g.n {
        for iy in 0..g.h {
            for ix in 0..g.w {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let (Some(oy), Some(ox)) = (out(0, iy, ky, oh), out(1, ix, kx, ow)) else {
                            continue;
                        };
                        for fo in 0..f {
                            let zi = ((n * oh + oy) * ow + ox) * f + fo;
                            let gz = dz.map_or(0.0, |d| d[zi] as f64);
                            for ci in 0..cin {
                                let xi = ((n * g.h + iy) * g.w + ix) * cin + ci;
                                let ki = ((ky * kw + kx) * f + fo) * cin + ci;
                                z[zi] += x[xi] as f64 * k[ki] as f64;
                                dx[xi] += gz * k[ki] as f64;
                                dk[ki] += gz * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut y = vec![0.0f32; z.len()];
    for (i, (yv, zv)) in y.iter_mut().zip(&z).enumerate() {
        let fo = i % f;
        *yv = act_ref(act, zv + b.map_or(0.0, |b| b[fo] as f64)) as f32;
        db[fo] += dz.map_or(0.0, |d| d[i] as f64);
    }
    (y, cast(dx), cast(dk), cast(db))
}

fn cast(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|a| a as f32).collect()
}

/// IR attributes of a (dilated) conv2d.
pub fn conv_attrs(
    c: usize,
    f: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pads: Pads2d,
) -> Conv2dAttrs {
    Conv2dAttrs {
        in_channels: c,
        filters: f,
        kernel_size: k,
        strides: s,
        pads,
        dilation_rate: d,
    }
}

/// IR attributes of a depthwise conv2d.
pub fn depthwise_attrs(
    c: usize,
    dm: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pads: Pads2d,
) -> DepthwiseConv2dAttrs {
    DepthwiseConv2dAttrs {
        in_channels: c,
        depth_multiplier: dm,
        kernel_size: k,
        strides: s,
        pads,
        dilation_rate: d,
    }
}

/// IR attributes of a transposed conv2d with crop `[top, left]`.
pub fn transpose_attrs(
    cin: usize,
    f: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    crop: [usize; 2],
) -> Conv2dTransposeAttrs {
    Conv2dTransposeAttrs {
        in_channels: cin,
        filters: f,
        kernel_size: k,
        strides: s,
        pads: Pads2d {
            top: crop[0],
            bottom: 0,
            left: crop[1],
            right: 0,
        },
        dilation_rate: d,
    }
}

/// Runs `f` in a rayon pool of `threads` threads.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}
