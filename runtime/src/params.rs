//! Parameter storage, Keras-default initialisation, and parameters prepared
//! for inference.
//!
//! # The model's parameters and the graph's
//!
//! [`Graph::params`] starts with the model's own parameters (the same list,
//! in the same order, as the training graph and a checkpoint). An inference
//! graph optimized by the passes may append [`Init::Folded`] parameters
//! (a batch norm folded into the kernel and bias of the layer before it),
//! which are never trained or saved: they are computed from the model's
//! parameters when the model is loaded for inference. [`model_param_count`]
//! says where the model's own parameters end.
//!
//! # Running an inference graph
//!
//! [`InferenceParams`] holds what an inference graph reads, computed from the
//! model's parameters:
//!
//! - [`InferenceParams::prepare`] takes the model's [`ParamStore`] by value
//!   and keeps only what the graph's nodes read: folded kernels are scaled in
//!   place of the kernels they replace, parameters no node reads any more
//!   (the original kernels and the batch-norm vectors) are dropped, and conv
//!   and dense kernels are packed once into the GEMM's panel layout (on CPUs
//!   where the in-crate AVX-512 GEMM runs; see [`PrepareOptions`]), except
//!   3x3 stride-1 conv kernels on large enough maps, which are transformed
//!   once for Winograd F(2x2, 3x3) ([`WinogradPolicy`]; 16 instead of 9
//!   values per input channel and filter). The result is self-contained and
//!   never larger than the model's parameters plus panel padding and those
//!   Winograd kernels' 7/9 extra.
//! - [`InferenceParams::fold`] computes only the folded values and reads
//!   every other parameter from the model's store at run time
//!   ([`InferenceParams::over`]), for a model that keeps training.
//!
//! Either is a *snapshot*: after the model's parameters change (a training
//! step), prepare again. [`crate::train::Classifier`] and
//! [`crate::train::Trainer`] do so on every evaluation, so only code that
//! drives an [`crate::executor::Executor`] itself holds snapshots.
//!
//! The executor accepts any of them through [`ParamsRef`] (`&ParamStore`,
//! `&InferenceParams`, or [`InferenceParams::over`]); it refuses a plain
//! store for a graph with folded parameters ([`ParamError::Unprepared`]), so
//! folded values can never be silently stale or zero.

use crate::kernels::conv::{prepared_winograd_applies, Conv2dShape, PreparedKernel};
use crate::kernels::gemm::Rhs;
use crate::kernels::winograd::{self, PreparedWinograd};
use crate::tensor::Tensor;
use cnnc_compiler::graph::ir::{BatchNormStats, Fold, Init, Op, Param, ParamId};
use cnnc_compiler::graph::Graph;
use ndarray::IxDyn;
use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;

/// A parameter value does not match the graph's declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("expected {expected} parameter tensors, got {got}")]
    Count { expected: usize, got: usize },
    #[error("parameter `{name}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A graph with folded parameters was given a plain [`ParamStore`].
    #[error(
        "the graph has {folded} folded parameter(s) (batch norms folded into the layer \
         before them), computed from the model's own parameters when they are loaded: \
         run it with `InferenceParams::prepare(&graph, params)` (or \
         `InferenceParams::fold(&graph, &params).over(&params)`) instead of the plain \
         parameter store"
    )]
    Unprepared { folded: usize },
    /// A folded parameter's declaration is inconsistent with its sources.
    #[error("folded parameter `{name}`: {reason}")]
    Fold { name: String, reason: String },
    /// The prepared parameters were made for a graph with other parameters.
    #[error(
        "the prepared parameters were made for a different graph (its parameter list differs); \
         prepare them from this graph"
    )]
    OtherGraph,
    /// A parameter a node reads is neither held by the prepared parameters
    /// nor given as a model parameter.
    #[error(
        "parameter `{name}` is read by the graph but the prepared parameters do not hold it \
         (parameters made by `InferenceParams::fold` need the model's store: `.over(&params)`)"
    )]
    Missing { name: String },
}

/// The values of a graph's parameters, aligned with `Graph::params`
/// (conv kernels `[kh, kw, in_channels, filters]`, depthwise kernels
/// `[kh, kw, in_channels, depth_multiplier]`, transposed-conv kernels
/// `[kh, kw, filters, in_channels]`, dense kernels `[in_features, units]`,
/// biases and batch-norm vectors `[channels]`), trainable or not (batch
/// norm's moving statistics are stored here too).
///
/// The executor validates only the parameters the graph's nodes read, so a
/// tensor no node reads may be left empty.
#[derive(Debug, Clone)]
pub struct ParamStore {
    pub values: Vec<Tensor>,
}

impl ParamStore {
    /// Initialises the model's parameters with their `Init`, in graph order,
    /// from one ChaCha8 generator seeded with `seed`:
    /// - `GlorotUniform { fan_in, fan_out }`: U(-l, l) with
    ///   `l = sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010, Keras
    ///   `GlorotUniform`), values drawn in row-major order;
    /// - `Zeros`: zeros, `Ones`: ones (draw nothing).
    ///
    /// The store holds one tensor per parameter of the model
    /// ([`model_params`]): every parameter of a graph without folding; for
    /// an inference graph with [`Init::Folded`] parameters, not those (they
    /// are computed from these by [`InferenceParams::prepare`], so the
    /// weights are never held twice). The values drawn do not depend on
    /// whether the graph was optimized.
    pub fn init(graph: &Graph, seed: u64) -> ParamStore {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<Tensor> = model_params(graph)
            .iter()
            .map(|p| match p.init {
                Init::GlorotUniform { fan_in, fan_out } => {
                    let limit = glorot_limit(fan_in, fan_out);
                    if limit > 0.0 {
                        let dist = Uniform::new(-limit, limit);
                        let data: Vec<f32> = (0..p.len()).map(|_| dist.sample(&mut rng)).collect();
                        Tensor::from_shape_vec(IxDyn(&p.shape), data)
                            .expect("length equals the product of the shape")
                    } else {
                        Tensor::zeros(IxDyn(&p.shape))
                    }
                }
                Init::Zeros => Tensor::zeros(IxDyn(&p.shape)),
                Init::Ones => Tensor::ones(IxDyn(&p.shape)),
                // Not among the model's parameters (they come after them).
                Init::Folded { .. } => Tensor::zeros(IxDyn(&p.shape)),
            })
            .collect();
        ParamStore { values }
    }

    /// All-zero tensors shaped like the graph's parameters (e.g. gradient or
    /// optimizer-state buffers).
    pub fn zeros_like(graph: &Graph) -> ParamStore {
        ParamStore {
            values: graph
                .params
                .iter()
                .map(|p| Tensor::zeros(IxDyn(&p.shape)))
                .collect(),
        }
    }

    /// Checks that there is one tensor per graph parameter with the declared shape.
    pub fn check(&self, graph: &Graph) -> Result<(), ParamError> {
        if self.values.len() != graph.params.len() {
            return Err(ParamError::Count {
                expected: graph.params.len(),
                got: self.values.len(),
            });
        }
        for (p, v) in graph.params.iter().zip(&self.values) {
            check_shape(p, v)?;
        }
        Ok(())
    }
}

fn check_shape(p: &Param, v: &Tensor) -> Result<(), ParamError> {
    if v.shape() != p.shape.as_slice() {
        return Err(ParamError::Shape {
            name: p.name.clone(),
            expected: p.shape.clone(),
            got: v.shape().to_vec(),
        });
    }
    Ok(())
}

/// Glorot uniform limit `sqrt(6 / (fan_in + fan_out))` (0 if both fans are 0).
pub fn glorot_limit(fan_in: usize, fan_out: usize) -> f32 {
    let fans = (fan_in + fan_out) as f64;
    if fans == 0.0 {
        0.0
    } else {
        (6.0 / fans).sqrt() as f32
    }
}

/// Number of the model's own parameters: the leading parameters of
/// `graph.params` that are not [`Init::Folded`] (all of them for a graph
/// without folding). A checkpoint and a training graph hold exactly these.
pub fn model_param_count(graph: &Graph) -> usize {
    graph
        .params
        .iter()
        .take_while(|p| !matches!(p.init, Init::Folded { .. }))
        .count()
}

/// The model's own parameters (see [`model_param_count`]): the list to load
/// a checkpoint with.
pub fn model_params(graph: &Graph) -> &[Param] {
    &graph.params[..model_param_count(graph)]
}

/// Which parameters the graph's nodes read (indexed like `Graph::params`).
/// Ids out of range are ignored (the executor reports them).
pub fn read_by_nodes(graph: &Graph) -> Vec<bool> {
    let mut read = vec![false; graph.params.len()];
    for node in &graph.nodes {
        for p in node.op.params() {
            if let Some(r) = read.get_mut(p.0) {
                *r = true;
            }
        }
    }
    read
}

/// A digest of the graph's parameter declarations (names, shapes, inits,
/// trainability), to check that prepared parameters belong to a graph.
pub(crate) fn fingerprint(graph: &Graph) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    graph.params.len().hash(&mut h);
    for p in &graph.params {
        p.name.hash(&mut h);
        p.shape.hash(&mut h);
        p.trainable.hash(&mut h);
        format!("{:?}", p.init).hash(&mut h);
    }
    h.finish()
}

/// The row-major data of a parameter value, if it is stored that way.
fn data(t: &Tensor) -> Option<&[f32]> {
    t.as_slice()
}

/// Per-channel `scale = gamma / sqrt(moving_variance + epsilon)` and
/// `shift = beta - moving_mean * scale` of an inference batch norm, in f64
/// (`gamma` 1 and `beta` 0 when absent; epsilon added once, inside the
/// square root), as [`BatchNormStats`] defines them.
fn scale_shift<'a>(
    stats: &BatchNormStats,
    get: &dyn Fn(ParamId) -> Result<&'a [f32], String>,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mean = get(stats.moving_mean)?;
    let var = get(stats.moving_variance)?;
    let c = mean.len();
    let gamma = stats.gamma.map(get).transpose()?;
    let beta = stats.beta.map(get).transpose()?;
    for (what, v) in [
        ("moving_variance", Some(var)),
        ("gamma", gamma),
        ("beta", beta),
    ] {
        if let Some(v) = v {
            if v.len() != c {
                return Err(format!(
                    "batch-norm {what} has {} values, moving_mean has {c}",
                    v.len()
                ));
            }
        }
    }
    let eps = f64::from(stats.epsilon);
    let scale: Vec<f64> = (0..c)
        .map(|o| gamma.map_or(1.0, |g| f64::from(g[o])) / (f64::from(var[o]) + eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..c)
        .map(|o| beta.map_or(0.0, |b| f64::from(b[o])) - f64::from(mean[o]) * scale[o])
        .collect();
    Ok((scale, shift))
}

/// Computes folded parameter `i` into `values[i]` (reusing its buffer when
/// it has the right shape), reading sources from `values` or else `model`.
///
/// With `consume` (the parameters nodes read, plus how many later folds
/// read each parameter), a kernel that nothing else reads is moved into the
/// folded slot and scaled in place instead of copied.
fn fold_one(
    graph: &Graph,
    i: usize,
    values: &mut [Option<Tensor>],
    model: Option<&[Tensor]>,
    consume: Option<(&[bool], &mut [usize])>,
) -> Result<(), ParamError> {
    let param = &graph.params[i];
    let fold_err = |reason: String| ParamError::Fold {
        name: param.name.clone(),
        reason,
    };
    let Init::Folded { fold } = param.init else {
        return Err(fold_err("not a folded parameter".into()));
    };
    let sources = fold.sources();
    if let Some(bad) = sources.iter().find(|s| s.0 >= i) {
        return Err(fold_err(format!(
            "reads parameter {} which does not come before it",
            bad.0
        )));
    }
    let (before, rest) = values.split_at_mut(i);
    let target = &mut rest[0];
    let lookup = |id: ParamId| -> Result<&Tensor, String> {
        before[id.0]
            .as_ref()
            .or_else(|| model.and_then(|m| m.get(id.0)))
            .ok_or_else(|| format!("its source `{}` is not available", graph.params[id.0].name))
    };
    let get = |id: ParamId| -> Result<&[f32], String> {
        let t = lookup(id)?;
        if t.shape() != graph.params[id.0].shape.as_slice() {
            return Err(format!(
                "its source `{}` has shape {:?}, declared {:?}",
                graph.params[id.0].name,
                t.shape(),
                graph.params[id.0].shape
            ));
        }
        data(t).ok_or_else(|| {
            format!(
                "its source `{}` is not stored in row-major order",
                graph.params[id.0].name
            )
        })
    };
    match fold {
        Fold::BatchNormKernel { kernel, stats } => {
            let (scale, _) = scale_shift(&stats, &get).map_err(fold_err)?;
            let c = scale.len();
            let kshape = &graph.params[kernel.0].shape;
            let per_channel_axes = match kshape.as_slice() {
                [.., last] if *last == c => true,
                [.., a, b] if a * b == c => true,
                _ => false,
            };
            if kshape != &param.shape || c == 0 || !per_channel_axes {
                return Err(fold_err(format!(
                    "shape {:?} does not scale kernel `{}` {:?} by {c} channels",
                    param.shape, graph.params[kernel.0].name, kshape
                )));
            }
            let src = get(kernel).map_err(fold_err)?;
            let scale_all = |out: &mut [f32], src: Option<&[f32]>| {
                for (row_out, k) in out.chunks_exact_mut(c).zip(0..) {
                    let row_src = src.map(|s| &s[k * c..(k + 1) * c]);
                    for (o, v) in row_out.iter_mut().enumerate() {
                        let x = row_src.map_or(*v, |s| s[o]);
                        *v = (f64::from(x) * scale[o]) as f32;
                    }
                }
            };
            let movable = match &consume {
                Some((read, fold_readers)) => {
                    !read[kernel.0] && fold_readers[kernel.0] == 1 && before[kernel.0].is_some()
                }
                None => false,
            };
            if movable {
                let mut t = before[kernel.0].take().expect("checked above");
                let buf = t.as_slice_mut().expect("row-major (checked by get)");
                scale_all(buf, None);
                *target = Some(t);
            } else {
                match target
                    .as_mut()
                    .filter(|t| t.shape() == param.shape.as_slice())
                {
                    Some(t) => scale_all(t.as_slice_mut().expect("owned, row-major"), Some(src)),
                    None => {
                        let mut t = Tensor::zeros(IxDyn(&param.shape));
                        scale_all(t.as_slice_mut().expect("new tensor"), Some(src));
                        *target = Some(t);
                    }
                }
            }
            if let Some((_, fold_readers)) = consume {
                for s in sources {
                    fold_readers[s.0] = fold_readers[s.0].saturating_sub(1);
                }
            }
        }
        Fold::BatchNormBias { bias, stats } => {
            let (scale, shift) = scale_shift(&stats, &get).map_err(fold_err)?;
            let c = scale.len();
            if param.shape != [c] {
                return Err(fold_err(format!(
                    "shape {:?}, but the batch norm has {c} channels",
                    param.shape
                )));
            }
            let b = bias.map(get).transpose().map_err(fold_err)?;
            if let Some(b) = b {
                if b.len() != c {
                    return Err(fold_err(format!(
                        "bias has {} values for {c} channels",
                        b.len()
                    )));
                }
            }
            let value =
                |o: usize| (b.map_or(0.0, |b| f64::from(b[o])) * scale[o] + shift[o]) as f32;
            match target.as_mut().filter(|t| t.shape() == [c]) {
                Some(t) => t.iter_mut().enumerate().for_each(|(o, v)| *v = value(o)),
                None => {
                    let data: Vec<f32> = (0..c).map(value).collect();
                    *target = Some(Tensor::from_shape_vec(IxDyn(&[c]), data).expect("c values"));
                }
            }
            if let Some((_, fold_readers)) = consume {
                for s in sources {
                    fold_readers[s.0] = fold_readers[s.0].saturating_sub(1);
                }
            }
        }
    }
    Ok(())
}

/// Options of [`InferenceParams::prepare_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Pack the kernels of conv and dense nodes once into the GEMM's panel
    /// layout (replacing the kernel tensor, so no memory is added) instead
    /// of on every forward call. Only done where the in-crate AVX-512 GEMM
    /// runs (elsewhere the GEMM reads the kernel in place). Default: on.
    pub pack_kernels: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions { pack_kernels: true }
    }
}

/// Which prepared conv kernels [`InferenceParams::prepare_with_winograd`]
/// prepares as Winograd F(2x2, 3x3) (3x3, stride 1, undilated, at least 8
/// input channels and filters: [`winograd::applies`]) instead of packing
/// them for im2col + GEMM. Only with [`PrepareOptions::pack_kernels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WinogradPolicy {
    /// Where it was measured to be faster at batch 1 and at large batches
    /// ([`prepared_winograd_applies`]). The default.
    #[default]
    Auto,
    /// Never: every conv kernel runs im2col + GEMM.
    Off,
    /// Wherever [`winograd::applies`] and the output is at least this many
    /// pixels high and wide (for measurements and tests).
    MinOutputSize(usize),
}

impl WinogradPolicy {
    /// Whether the convolution `s` (batch irrelevant) gets a Winograd kernel.
    fn chooses(self, s: &Conv2dShape) -> bool {
        match self {
            WinogradPolicy::Auto => prepared_winograd_applies(s),
            WinogradPolicy::Off => false,
            WinogradPolicy::MinOutputSize(min) => {
                winograd::applies(s) && s.out_h.min(s.out_w) >= min
            }
        }
    }
}

/// The parameters of one inference graph, prepared from the model's
/// parameters (see the module docs): folded values computed, parameters no
/// node reads dropped, kernels optionally packed for the GEMM.
///
/// A snapshot: when the model's parameters change, prepare again.
pub struct InferenceParams {
    /// Per graph parameter: the value held here, if any.
    values: Vec<Option<Tensor>>,
    /// Per graph parameter: the kernel prepared for the conv / dense
    /// forward pass (packed for the GEMM, or Winograd-transformed), if it
    /// was (its tensor is then not held).
    packed: Vec<Option<PreparedKernel>>,
    /// [`fingerprint`] of the graph prepared for.
    fingerprint: u64,
    /// [`model_param_count`] of that graph.
    model_len: usize,
}

impl std::fmt::Debug for InferenceParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceParams")
            .field("held", &self.values.iter().filter(|v| v.is_some()).count())
            .field(
                "packed",
                &self.packed.iter().filter(|v| v.is_some()).count(),
            )
            .field(
                "winograd",
                &self
                    .packed
                    .iter()
                    .filter(|v| matches!(v, Some(PreparedKernel::Winograd(_))))
                    .count(),
            )
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Checks that `graph.params` is the model's parameters followed only by
/// folded ones; returns the model's count.
fn check_layout(graph: &Graph) -> Result<usize, ParamError> {
    let model_len = model_param_count(graph);
    if let Some(p) = graph.params[model_len..]
        .iter()
        .find(|p| !matches!(p.init, Init::Folded { .. }))
    {
        return Err(ParamError::Fold {
            name: p.name.clone(),
            reason: "a model parameter follows the folded parameters (folded parameters \
                     must come last)"
                .into(),
        });
    }
    Ok(model_len)
}

/// Checks that `model` holds the model's parameters of `graph` (`model_len`
/// of them, or one per graph parameter, the folded ones then ignored).
fn check_model_count(
    graph: &Graph,
    model_len: usize,
    model: &ParamStore,
) -> Result<(), ParamError> {
    let got = model.values.len();
    if got != model_len && got != graph.params.len() {
        return Err(ParamError::Count {
            expected: model_len,
            got,
        });
    }
    Ok(())
}

/// How node `i` of `graph` reads parameter `p` as a conv or dense kernel,
/// if it does: the `[rows, cols]` GEMM view (a conv kernel
/// `[kh, kw, in_channels, filters]` is `[kh * kw * in_channels, filters]`),
/// and for a convolution, its geometry for one image (`None` when the
/// shapes do not give one: the executor reports that).
fn kernel_use(graph: &Graph, i: usize, p: ParamId) -> Option<KernelUse> {
    let node = &graph.nodes[i];
    let (kernel, attrs) = match &node.op {
        Op::Conv2d { kernel, attrs } | Op::FusedConv2d { kernel, attrs, .. } => {
            (*kernel, Some(attrs))
        }
        Op::MatMul { kernel, .. } | Op::FusedMatMul { kernel, .. } => (*kernel, None),
        _ => return None,
    };
    if kernel != p {
        return None;
    }
    let (&cols, lead) = graph.params.get(p.0)?.shape.split_last()?;
    let conv = attrs.and_then(|attrs| {
        let input = graph.nodes.get(node.inputs.first()?.0)?;
        let &[in_h, in_w, _] = input.shape.as_slice() else {
            return None;
        };
        Conv2dShape::new(attrs, 1, in_h, in_w).ok()
    });
    Some(KernelUse {
        view: (lead.iter().product(), cols),
        conv,
    })
}

/// See [`kernel_use`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct KernelUse {
    view: (usize, usize),
    conv: Option<Conv2dShape>,
}

impl InferenceParams {
    /// Prepares `graph`'s parameters from the model's (`model`: the
    /// [`model_param_count`] leading parameters of the graph, as a
    /// checkpoint or a training [`ParamStore`] holds them; a store with one
    /// tensor per graph parameter is accepted too, its folded entries
    /// ignored), with the default [`PrepareOptions`].
    ///
    /// Folded values are computed as [`Fold`] documents (scale and shift in
    /// f64). A kernel read only by its fold is scaled in place, and every
    /// parameter no node reads is dropped, so at no point are two copies of
    /// the weights held.
    pub fn prepare(graph: &Graph, model: ParamStore) -> Result<InferenceParams, ParamError> {
        InferenceParams::prepare_with(graph, model, PrepareOptions::default())
    }

    /// [`InferenceParams::prepare`] with explicit options.
    pub fn prepare_with(
        graph: &Graph,
        model: ParamStore,
        options: PrepareOptions,
    ) -> Result<InferenceParams, ParamError> {
        InferenceParams::prepare_with_winograd(graph, model, options, WinogradPolicy::Auto)
    }

    /// [`InferenceParams::prepare_with`], choosing which 3x3 conv kernels
    /// run as Winograd F(2x2, 3x3) by `winograd` (with
    /// `options.pack_kernels` only; a kernel read by several nodes only if
    /// every one of them is such a convolution).
    pub fn prepare_with_winograd(
        graph: &Graph,
        model: ParamStore,
        options: PrepareOptions,
        winograd: WinogradPolicy,
    ) -> Result<InferenceParams, ParamError> {
        let model_len = check_layout(graph)?;
        check_model_count(graph, model_len, &model)?;
        let n = graph.params.len();
        let read = read_by_nodes(graph);
        // How many folds read each parameter.
        let mut fold_readers = vec![0usize; n];
        for p in &graph.params[model_len..] {
            if let Init::Folded { fold } = p.init {
                for s in fold.sources() {
                    if let Some(r) = fold_readers.get_mut(s.0) {
                        *r += 1;
                    }
                }
            }
        }
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(n);
        for (i, t) in model.values.into_iter().take(model_len).enumerate() {
            // Drop at once what neither a node nor a fold reads.
            if read[i] || fold_readers[i] > 0 {
                check_shape(&graph.params[i], &t)?;
                values.push(Some(t));
            } else {
                values.push(None);
            }
        }
        values.resize_with(n, || None);
        for i in model_len..n {
            fold_one(
                graph,
                i,
                &mut values,
                None,
                Some((&read, &mut fold_readers)),
            )?;
        }
        for (v, r) in values.iter_mut().zip(&read) {
            if !r {
                *v = None;
            }
        }
        let mut packed: Vec<Option<PreparedKernel>> = (0..n).map(|_| None).collect();
        if options.pack_kernels {
            // Per parameter: how its readers use it, if they all are conv /
            // dense nodes reading it as their kernel, the same way, and
            // whether all of them would run it as Winograd.
            let mut uses: Vec<Option<Option<(KernelUse, bool)>>> = vec![None; n];
            for (i, node) in graph.nodes.iter().enumerate() {
                for p in node.op.params() {
                    let Some(slot) = uses.get_mut(p.0) else {
                        continue;
                    };
                    let this = kernel_use(graph, i, p).map(|u| {
                        let wino = u.conv.is_some_and(|s| winograd.chooses(&s));
                        (u, wino)
                    });
                    *slot = match *slot {
                        None => Some(this),
                        Some(Some((prev, w))) => match this {
                            Some((u, w2)) if u.view == prev.view => Some(Some((u, w && w2))),
                            _ => Some(None),
                        },
                        Some(None) => Some(None),
                    };
                }
            }
            for i in 0..n {
                let (Some(Some((u, wino))), Some(t)) = (uses[i], values[i].as_ref()) else {
                    continue;
                };
                let prepared = match (wino, u.conv) {
                    (true, Some(s)) => {
                        t.as_slice().filter(|d| d.len() == s.kernel_len()).map(|d| {
                            PreparedKernel::Winograd(PreparedWinograd::new(
                                d,
                                s.in_channels,
                                s.filters,
                            ))
                        })
                    }
                    _ if crate::kernels::gemm::uses_avx512() => {
                        pack(t, u.view.0, u.view.1).map(PreparedKernel::Gemm)
                    }
                    _ => None,
                };
                if let Some(p) = prepared {
                    packed[i] = Some(p);
                    values[i] = None;
                }
            }
        }
        Ok(InferenceParams {
            values,
            packed,
            fingerprint: fingerprint(graph),
            model_len,
        })
    }

    /// Computes only `graph`'s folded parameters from `model` (the model's
    /// parameters, as for [`InferenceParams::prepare`]); every other
    /// parameter is read from the model's store at run time: run with
    /// [`InferenceParams::over`]. For a model that keeps training (fold
    /// again after each change); holds a copy of only the folded values.
    pub fn fold(graph: &Graph, model: &ParamStore) -> Result<InferenceParams, ParamError> {
        let model_len = check_layout(graph)?;
        let n = graph.params.len();
        let mut prepared = InferenceParams {
            values: (0..n).map(|_| None).collect(),
            packed: (0..n).map(|_| None).collect(),
            fingerprint: fingerprint(graph),
            model_len,
        };
        prepared.refold(graph, model)?;
        Ok(prepared)
    }

    /// Recomputes the folded values of parameters made by
    /// [`InferenceParams::fold`] from `model` (reusing their buffers).
    pub(crate) fn refold(&mut self, graph: &Graph, model: &ParamStore) -> Result<(), ParamError> {
        if self.fingerprint != fingerprint(graph) {
            return Err(ParamError::OtherGraph);
        }
        check_model_count(graph, self.model_len, model)?;
        for (p, v) in graph.params.iter().zip(&model.values).take(self.model_len) {
            if matches!(p.init, Init::Folded { .. }) {
                continue;
            }
            if v.shape() != p.shape.as_slice() {
                return Err(ParamError::Shape {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    got: v.shape().to_vec(),
                });
            }
        }
        let model_values = &model.values[..self.model_len];
        for i in self.model_len..graph.params.len() {
            fold_one(graph, i, &mut self.values, Some(model_values), None)?;
        }
        Ok(())
    }

    /// Runs with these folded values over the model's parameters `model`
    /// (for parameters made by [`InferenceParams::fold`]; also accepted for
    /// [`InferenceParams::prepare`]d ones, which then take precedence).
    pub fn over<'a>(&'a self, model: &'a ParamStore) -> ParamsRef<'a> {
        ParamsRef::Overlay {
            prepared: self,
            model,
        }
    }

    /// The value of parameter `id` held here (`None` for a parameter that
    /// was dropped, packed, or is read from the model's store).
    pub fn value(&self, id: ParamId) -> Option<&Tensor> {
        self.values.get(id.0).and_then(Option::as_ref)
    }

    /// Whether parameter `id` is held prepared for the conv / dense forward
    /// pass (packed for the GEMM or Winograd-transformed) instead of as a
    /// tensor.
    pub fn is_packed(&self, id: ParamId) -> bool {
        self.packed.get(id.0).is_some_and(Option::is_some)
    }

    /// Whether parameter `id` is held as a Winograd F(2x2, 3x3) kernel.
    pub fn is_winograd(&self, id: ParamId) -> bool {
        matches!(
            self.packed.get(id.0),
            Some(Some(PreparedKernel::Winograd(_)))
        )
    }

    /// Bytes held: values plus packed kernels (panel padding included).
    pub fn bytes(&self) -> usize {
        let values: usize = self.values.iter().flatten().map(|t| t.len() * 4).sum();
        let packed: usize = self
            .packed
            .iter()
            .flatten()
            .map(PreparedKernel::bytes)
            .sum();
        values + packed
    }

    /// How many parameters the prepared graph has.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Packs `t` viewed as `[rows, cols]` for the AVX-512 GEMM (None where it
/// does not run or the view does not fit).
fn pack(t: &Tensor, rows: usize, cols: usize) -> Option<Rhs<'static>> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::gemm::MatRef;
        let d = t.as_slice()?;
        if rows * cols != d.len() || rows == 0 || cols == 0 {
            return None;
        }
        Some(Rhs::Packed(crate::kernels::sgemm::pack_b(
            MatRef::row_major(d, rows, cols),
        )))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, rows, cols);
        None
    }
}

/// The parameters an [`crate::executor::Executor`] runs on.
#[derive(Clone, Copy)]
pub enum ParamsRef<'a> {
    /// One tensor per graph parameter (graphs without folded parameters).
    Store(&'a ParamStore),
    /// Self-contained prepared parameters ([`InferenceParams::prepare`]).
    Prepared(&'a InferenceParams),
    /// Prepared parameters over the model's store ([`InferenceParams::over`]).
    Overlay {
        prepared: &'a InferenceParams,
        model: &'a ParamStore,
    },
}

impl<'a> From<&'a ParamStore> for ParamsRef<'a> {
    fn from(p: &'a ParamStore) -> Self {
        ParamsRef::Store(p)
    }
}

impl<'a> From<&'a mut ParamStore> for ParamsRef<'a> {
    fn from(p: &'a mut ParamStore) -> Self {
        ParamsRef::Store(p)
    }
}

impl<'a> From<&'a InferenceParams> for ParamsRef<'a> {
    fn from(p: &'a InferenceParams) -> Self {
        ParamsRef::Prepared(p)
    }
}

/// Anything a forward pass can read parameters from: [`ParamStore`],
/// [`InferenceParams`], or a [`ParamsRef`] (e.g. [`InferenceParams::over`]).
/// The executor takes `&impl ParamSource`, so a `&mut ParamStore` is
/// accepted too.
pub trait ParamSource {
    fn param_ref(&self) -> ParamsRef<'_>;
}

impl ParamSource for ParamStore {
    fn param_ref(&self) -> ParamsRef<'_> {
        ParamsRef::Store(self)
    }
}

impl ParamSource for InferenceParams {
    fn param_ref(&self) -> ParamsRef<'_> {
        ParamsRef::Prepared(self)
    }
}

impl ParamSource for ParamsRef<'_> {
    fn param_ref(&self) -> ParamsRef<'_> {
        *self
    }
}

/// What a forward pass reads for each graph parameter.
pub(crate) struct Resolved<'a> {
    /// Row-major data per graph parameter (empty for parameters no node
    /// reads, and for packed kernels).
    pub data: Vec<Cow<'a, [f32]>>,
    /// Prepared (packed or Winograd) kernels per graph parameter.
    pub packed: Vec<Option<&'a PreparedKernel>>,
}

impl<'a> ParamsRef<'a> {
    /// Whether these are prepared parameters (which run inference only).
    pub fn is_prepared(&self) -> bool {
        !matches!(self, ParamsRef::Store(_))
    }

    /// Validates the parameters `read` (by the graph's nodes) and returns
    /// their data, reusing `into`'s vectors.
    pub(crate) fn resolve(
        self,
        graph: &Graph,
        read: &[bool],
        graph_fingerprint: u64,
        mut into: Resolved<'a>,
    ) -> Result<Resolved<'a>, ParamError> {
        let n = graph.params.len();
        into.data.clear();
        into.packed.clear();
        let row_major = |t: &'a Tensor| -> Cow<'a, [f32]> {
            match t.as_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(t.iter().copied().collect()),
            }
        };
        match self {
            ParamsRef::Store(store) => {
                let folded = graph
                    .params
                    .iter()
                    .filter(|p| matches!(p.init, Init::Folded { .. }))
                    .count();
                if folded > 0 {
                    return Err(ParamError::Unprepared { folded });
                }
                if store.values.len() != n {
                    return Err(ParamError::Count {
                        expected: n,
                        got: store.values.len(),
                    });
                }
                for (i, (p, v)) in graph.params.iter().zip(&store.values).enumerate() {
                    if read[i] {
                        check_shape(p, v)?;
                        into.data.push(row_major(v));
                    } else {
                        into.data.push(Cow::Borrowed(&[]));
                    }
                    into.packed.push(None);
                }
            }
            ParamsRef::Prepared(prepared) | ParamsRef::Overlay { prepared, .. } => {
                let model = match self {
                    ParamsRef::Overlay { model, .. } => Some(model),
                    _ => None,
                };
                if prepared.fingerprint != graph_fingerprint || prepared.values.len() != n {
                    return Err(ParamError::OtherGraph);
                }
                if let Some(model) = model {
                    check_model_count(graph, prepared.model_len, model)?;
                }
                for (i, p) in graph.params.iter().enumerate() {
                    let mut packed = None;
                    let data = if !read[i] {
                        Cow::Borrowed(&[][..])
                    } else if let Some(rhs) = &prepared.packed[i] {
                        packed = Some(rhs);
                        Cow::Borrowed(&[][..])
                    } else if let Some(v) = &prepared.values[i] {
                        check_shape(p, v)?;
                        row_major(v)
                    } else if let Some(v) = model
                        .and_then(|m| (i < prepared.model_len).then(|| m.values.get(i)).flatten())
                    {
                        check_shape(p, v)?;
                        row_major(v)
                    } else {
                        return Err(ParamError::Missing {
                            name: p.name.clone(),
                        });
                    };
                    into.data.push(data);
                    into.packed.push(packed);
                }
            }
        }
        Ok(into)
    }
}

/// Reuses a vector's allocation for a vector of another element type of
/// the same layout (typically the same type with another lifetime): it is
/// emptied first, and the in-place `collect` keeps the buffer.
pub(crate) fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}
