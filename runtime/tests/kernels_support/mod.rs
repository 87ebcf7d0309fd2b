//! Shared helpers for the kernel and executor tests: deterministic random
//! data, naive (direct-loop) reference kernels, finite differences, and a
//! hand-built graph builder.
#![allow(dead_code)]

use cnnc_compiler::graph::ir::{
    Conv2dAttrs, Graph, Init, Node, NodeId, Op, Param, ParamId, Pool2dAttrs,
};
use cnnc_compiler::model::{Activation, Pads2d};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in `[-1, 1)` from a seeded generator.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// A shuffled permutation of `0.1 * (0..n)` shifted to be centered at 0:
/// distinct values at least 0.1 apart (no ties for max pooling).
pub fn distinct_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..n).map(|i| 0.1 * i as f32 - 0.05 * n as f32).collect();
    for i in (1..n).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
    v
}

/// TensorFlow `same` padding for one axis: `(before, after, out)` with
/// `out = ceil(n / s)`, total `max((out - 1) * s + k - n, 0)`, odd pixel after.
pub fn same_pads(n: usize, k: usize, s: usize) -> (usize, usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    (total / 2, total - total / 2, out)
}

/// `Pads2d` for `same` padding of an `h × w` input.
pub fn same_pads2d(h: usize, w: usize, k: [usize; 2], s: [usize; 2]) -> Pads2d {
    let (t, b, _) = same_pads(h, k[0], s[0]);
    let (l, r, _) = same_pads(w, k[1], s[1]);
    Pads2d {
        top: t,
        bottom: b,
        left: l,
        right: r,
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

/// Applies an activation to one value (softmax excluded).
pub fn act_ref(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Linear => x,
        Activation::Relu => x.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Softmax => panic!("softmax is not element-wise"),
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
    }
}

/// Geometry of a naive conv: input `[n, h, w, c]`, kernel `[kh, kw, c, f]`.
#[derive(Clone, Copy, Debug)]
pub struct NaiveConv {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub f: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pads: Pads2d,
}

impl NaiveConv {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + self.pads.top + self.pads.bottom - self.kh) / self.sh + 1,
            (self.w + self.pads.left + self.pads.right - self.kw) / self.sw + 1,
        )
    }

    pub fn attrs(&self) -> Conv2dAttrs {
        Conv2dAttrs {
            in_channels: self.c,
            filters: self.f,
            kernel_size: [self.kh, self.kw],
            strides: [self.sh, self.sw],
            pads: self.pads,
            dilation_rate: [1, 1],
        }
    }

    /// The input pixel read by output (oy, ox) at tap (ky, kx), if inside the image.
    fn tap(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.sh + ky) as isize - self.pads.top as isize;
        let ix = (ox * self.sw + kx) as isize - self.pads.left as isize;
        (iy >= 0 && ix >= 0 && (iy as usize) < self.h && (ix as usize) < self.w)
            .then_some((iy as usize, ix as usize))
    }

    /// `y[n, oy, ox, f] = act(b[f] + Σ_{ky,kx,c} x[n, iy, ix, c] k[ky, kx, c, f])`, in f64.
    pub fn forward(&self, x: &[f32], k: &[f32], b: Option<&[f32]>, act: Activation) -> Vec<f32> {
        let (oh, ow) = self.out_hw();
        let mut y = vec![0.0f32; self.n * oh * ow * self.f];
        for n in 0..self.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for f in 0..self.f {
                        let mut acc = b.map_or(0.0, |b| b[f] as f64);
                        for ky in 0..self.kh {
                            for kx in 0..self.kw {
                                if let Some((iy, ix)) = self.tap(oy, ox, ky, kx) {
                                    for c in 0..self.c {
                                        acc += x[((n * self.h + iy) * self.w + ix) * self.c + c]
                                            as f64
                                            * k[((ky * self.kw + kx) * self.c + c) * self.f + f]
                                                as f64;
                                    }
                                }
                            }
                        }
                        y[((n * oh + oy) * ow + ox) * self.f + f] = act_ref(act, acc) as f32;
                    }
                }
            }
        }
        y
    }

    /// Gradients `(dx, dk, db)` of a linear conv given `dz` (d loss / d conv output).
    pub fn backward(&self, x: &[f32], k: &[f32], dz: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (oh, ow) = self.out_hw();
        let mut dx = vec![0.0f64; x.len()];
        let mut dk = vec![0.0f64; k.len()];
        let mut db = vec![0.0f64; self.f];
        for n in 0..self.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for f in 0..self.f {
                        let g = dz[((n * oh + oy) * ow + ox) * self.f + f] as f64;
                        db[f] += g;
                        for ky in 0..self.kh {
                            for kx in 0..self.kw {
                                if let Some((iy, ix)) = self.tap(oy, ox, ky, kx) {
                                    for c in 0..self.c {
                                        let xi = ((n * self.h + iy) * self.w + ix) * self.c + c;
                                        let ki = ((ky * self.kw + kx) * self.c + c) * self.f + f;
                                        dx[xi] += g * k[ki] as f64;
                                        dk[ki] += g * x[xi] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let cast = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (cast(dx), cast(dk), cast(db))
    }
}

/// Naive pooling over `[n, h, w, c]`; returns the output and, for max, the
/// flat input index of each winner (in-image pixels only).
pub fn naive_pool(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    attrs: &Pool2dAttrs,
    max: bool,
) -> (Vec<f32>, Vec<usize>) {
    let [ph, pw] = attrs.pool_size;
    let [sh, sw] = attrs.strides;
    let p = attrs.pads;
    let oh = (h + p.top + p.bottom - ph) / sh + 1;
    let ow = (w + p.left + p.right - pw) / sw + 1;
    let mut y = vec![0.0; n * oh * ow * c];
    let mut arg = vec![usize::MAX; y.len()];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = usize::MAX;
                    let mut sum = 0.0f64;
                    let mut count = 0;
                    for ky in 0..ph {
                        for kx in 0..pw {
                            let iy = (oy * sh + ky) as isize - p.top as isize;
                            let ix = (ox * sw + kx) as isize - p.left as isize;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            let i = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                            if x[i] > best {
                                best = x[i];
                                best_i = i;
                            }
                            sum += x[i] as f64;
                            count += 1;
                        }
                    }
                    let o = ((b * oh + oy) * ow + ox) * c + ch;
                    if max {
                        y[o] = best;
                        arg[o] = best_i;
                    } else {
                        y[o] = (sum / count as f64) as f32;
                    }
                }
            }
        }
    }
    (y, arg)
}

/// `y[r, u] = act(b[u] + Σ_i x[r, i] k[i, u])` in f64.
pub fn naive_matmul(
    x: &[f32],
    k: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    rows: usize,
    inf: usize,
    units: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; rows * units];
    for r in 0..rows {
        for u in 0..units {
            let mut acc = b.map_or(0.0, |b| b[u] as f64);
            for i in 0..inf {
                acc += x[r * inf + i] as f64 * k[i * units + u] as f64;
            }
            y[r * units + u] = act_ref(act, acc) as f32;
        }
    }
    y
}

/// `Σ w_i y_i` in f64 (the scalar loss used by gradient checks).
pub fn weighted_sum(y: &[f32], w: &[f32]) -> f64 {
    y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Central-difference check of `grad` (analytic d loss / d v) at up to
/// `samples` evenly spaced indices of `v`:
/// `(loss(v + eps e_i) - loss(v - eps e_i)) / (2 eps)` must be within
/// `atol + rtol * |grad_i|` of `grad_i`.
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
    }
    assert!(checked > 0, "{what}: nothing checked");
}

/// Builds op graphs by hand, node by node, with parameters in creation order.
pub struct GraphBuilder {
    pub graph: Graph,
}

impl GraphBuilder {
    /// A graph with one input of per-example shape `shape`.
    pub fn new(shape: &[usize]) -> GraphBuilder {
        GraphBuilder {
            graph: Graph {
                name: "test".into(),
                nodes: vec![Node {
                    op: Op::Input,
                    inputs: vec![],
                    shape: shape.to_vec(),
                    layer: "input".into(),
                    fused: vec![],
                    rule: None,
                }],
                input: NodeId(0),
                output: NodeId(0),
                params: vec![],
                inputs: vec![],
                outputs: vec![],
            },
        }
    }

    fn last(&self) -> NodeId {
        NodeId(self.graph.nodes.len() - 1)
    }

    fn last_shape(&self) -> Vec<usize> {
        self.graph.nodes.last().expect("input").shape.clone()
    }

    /// Adds a parameter.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> ParamId {
        self.graph.params.push(Param {
            name: name.into(),
            shape: shape.to_vec(),
            init,
            trainable: true,
        });
        ParamId(self.graph.params.len() - 1)
    }

    /// Appends a node reading the previous node; it becomes the output.
    pub fn push(&mut self, op: Op, shape: Vec<usize>) -> NodeId {
        let input = self.last();
        self.graph.nodes.push(Node {
            op,
            inputs: vec![input],
            shape,
            layer: format!("layer{}", self.graph.nodes.len()),
            fused: vec![],
            rule: None,
        });
        self.graph.output = self.last();
        self.graph.output
    }

    /// Conv params + node (optionally fused with bias and activation).
    pub fn conv(
        &mut self,
        filters: usize,
        k: [usize; 2],
        s: [usize; 2],
        same: bool,
        fused: Option<(bool, Activation)>,
    ) -> NodeId {
        let [h, w, c] = <[usize; 3]>::try_from(self.last_shape()).expect("[h, w, c]");
        let pads = if same {
            same_pads2d(h, w, k, s)
        } else {
            Pads2d::default()
        };
        let attrs = Conv2dAttrs {
            in_channels: c,
            filters,
            kernel_size: k,
            strides: s,
            pads,
            dilation_rate: [1, 1],
        };
        let oh = (h + pads.top + pads.bottom - k[0]) / s[0] + 1;
        let ow = (w + pads.left + pads.right - k[1]) / s[1] + 1;
        let idx = self.graph.params.len();
        let kernel = self.param(
            &format!("conv{idx}/kernel"),
            &[k[0], k[1], c, filters],
            Init::GlorotUniform {
                fan_in: k[0] * k[1] * c,
                fan_out: k[0] * k[1] * filters,
            },
        );
        let op = match fused {
            None => Op::Conv2d { attrs, kernel },
            Some((with_bias, activation)) => {
                let bias = with_bias
                    .then(|| self.param(&format!("conv{idx}/bias"), &[filters], Init::Zeros));
                Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                    residual: false,
                }
            }
        };
        self.push(op, vec![oh, ow, filters])
    }

    /// Dense params + node (optionally fused).
    pub fn matmul(&mut self, units: usize, fused: Option<(bool, Activation)>) -> NodeId {
        let shape = self.last_shape();
        let inf = *shape.last().expect("features");
        let idx = self.graph.params.len();
        let kernel = self.param(
            &format!("dense{idx}/kernel"),
            &[inf, units],
            Init::GlorotUniform {
                fan_in: inf,
                fan_out: units,
            },
        );
        let op = match fused {
            None => Op::MatMul { units, kernel },
            Some((with_bias, activation)) => {
                let bias = with_bias
                    .then(|| self.param(&format!("dense{idx}/bias"), &[units], Init::Zeros));
                Op::FusedMatMul {
                    units,
                    kernel,
                    bias,
                    activation,
                }
            }
        };
        let mut out = shape[..shape.len() - 1].to_vec();
        out.push(units);
        self.push(op, out)
    }

    pub fn bias(&mut self) -> NodeId {
        let shape = self.last_shape();
        let c = *shape.last().expect("channels");
        let idx = self.graph.params.len();
        let bias = self.param(&format!("bias{idx}"), &[c], Init::Zeros);
        self.push(Op::BiasAdd { bias }, shape)
    }

    pub fn act(&mut self, activation: Activation) -> NodeId {
        let shape = self.last_shape();
        self.push(Op::Activation { activation }, shape)
    }

    pub fn softmax(&mut self) -> NodeId {
        let shape = self.last_shape();
        self.push(Op::Softmax, shape)
    }

    pub fn dropout(&mut self, rate: f32) -> NodeId {
        let shape = self.last_shape();
        self.push(Op::Dropout { rate }, shape)
    }

    pub fn flatten(&mut self) -> NodeId {
        let n = self.last_shape().iter().product();
        self.push(Op::Flatten, vec![n])
    }

    /// Pooling node; `same` uses TensorFlow's padding rule.
    pub fn pool(&mut self, max: bool, p: [usize; 2], s: [usize; 2], same: bool) -> NodeId {
        let [h, w, c] = <[usize; 3]>::try_from(self.last_shape()).expect("[h, w, c]");
        let pads = if same {
            same_pads2d(h, w, p, s)
        } else {
            Pads2d::default()
        };
        let attrs = Pool2dAttrs {
            pool_size: p,
            strides: s,
            pads,
        };
        let oh = (h + pads.top + pads.bottom - p[0]) / s[0] + 1;
        let ow = (w + pads.left + pads.right - p[1]) / s[1] + 1;
        let op = if max {
            Op::MaxPool2d { attrs }
        } else {
            Op::AvgPool2d { attrs }
        };
        self.push(op, vec![oh, ow, c])
    }

    pub fn build(self) -> Graph {
        self.graph
    }
}

/// The Fashion-MNIST CNN of Géron ch. 14 as a fused op graph:
/// conv64 k7 same relu -> maxpool2 -> conv128 k3 relu ×2 -> maxpool2 ->
/// conv256 k3 relu ×2 -> maxpool2 -> flatten -> dense128 relu -> dropout 0.5
/// -> dense64 relu -> dropout 0.5 -> dense10 -> softmax; input 28×28×1.
pub fn fashion_mnist_graph() -> Graph {
    let relu = Some((true, Activation::Relu));
    let mut g = GraphBuilder::new(&[28, 28, 1]);
    g.conv(64, [7, 7], [1, 1], true, relu);
    g.pool(true, [2, 2], [2, 2], false);
    g.conv(128, [3, 3], [1, 1], true, relu);
    g.conv(128, [3, 3], [1, 1], true, relu);
    g.pool(true, [2, 2], [2, 2], false);
    g.conv(256, [3, 3], [1, 1], true, relu);
    g.conv(256, [3, 3], [1, 1], true, relu);
    g.pool(true, [2, 2], [2, 2], false);
    g.flatten();
    g.matmul(128, relu);
    g.dropout(0.5);
    g.matmul(64, relu);
    g.dropout(0.5);
    g.matmul(10, Some((true, Activation::Linear)));
    g.softmax();
    g.build()
}
