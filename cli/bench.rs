//! `cnnc bench`: steady-state training or inference throughput of a spec,
//! measured with cnnc's own compiler and runtime.
//!
//! The workload mirrors `bench/tf_bench.py` step for step so that the two can
//! be compared row by row (`bench/run.sh` runs both):
//!
//! - the spec is checked, lowered and optimized for the workload's target
//!   ([`Target::Training`] or [`Target::Inference`]);
//! - the input is the first `batch_size * (warmup + steps)` Fashion-MNIST
//!   training images (cycling if fewer), scaled to `[0, 1]`, NHWC
//!   `[batch, 28, 28, 1]`; without the data files it is deterministic
//!   pseudo-random data in `[0, 1)` of the spec's input shape;
//! - a training step is forward (dropout active) -> mean sparse softmax
//!   cross-entropy gradient on the logits -> backward -> SGD with momentum
//!   (lr 0.01, momentum 0.9, Keras's update rule);
//! - an inference step is one forward pass in [`Mode::Inference`];
//! - `warmup` steps run untimed, then `steps` steps are timed.
//!
//! Peak RSS is `VmHWM` from `/proc/self/status` (Linux; absent elsewhere).

use cnnc_compiler::graph::passes::{optimize, Target};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Learning rate of the benchmark's SGD (the book's `SGD(learning_rate=0.01, momentum=0.9)`).
const LEARNING_RATE: f32 = 0.01;
/// Momentum of the benchmark's SGD.
const MOMENTUM: f32 = 0.9;

/// What to measure.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// Forward + loss gradient + backward + SGD-momentum update per step.
    Train,
    /// One forward pass in inference mode per step.
    Infer,
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::Train => "train",
            BenchMode::Infer => "infer",
        }
    }
}

/// How to print the result.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchFormat {
    /// A few lines for people.
    Text,
    /// One JSON object on one line (the keys of `bench/tf_bench.py`).
    Json,
}

/// Arguments of `cnnc bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The `.cnn` spec to benchmark.
    pub spec: PathBuf,

    /// Workload: training steps or inference passes.
    #[arg(long, value_enum, default_value_t = BenchMode::Train)]
    pub mode: BenchMode,

    /// Examples per step.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,

    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub steps: usize,

    /// Untimed steps run first (allocation, caches, thread start-up).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub warmup: usize,

    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Text)]
    pub format: BenchFormat,

    /// Directory with the Fashion-MNIST IDX files
    /// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`).
    /// Default: `$FASHION_MNIST_DIR`, else `../shared/data/fashion-mnist`
    /// next to the current directory, else `shared/data/fashion-mnist`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Seed of the parameter initialisation and of the dropout masks.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One measurement, as printed by `--format json`.
#[derive(Debug, Serialize)]
struct BenchResult {
    #[serde(rename = "impl")]
    implementation: &'static str,
    /// `train-b128`, `infer-b1`, ...
    workload: String,
    mode: &'static str,
    threads: usize,
    batch_size: usize,
    steps: usize,
    warmup: usize,
    images_per_s: f64,
    ms_per_batch: f64,
    peak_rss_mb: Option<f64>,
    params: usize,
    /// `fashion-mnist` or `random`.
    data: &'static str,
    /// Mean loss of the last timed training step (None for inference).
    last_loss: Option<f32>,
    /// Rewrites made by the optimization passes.
    rewrites: usize,
}

/// Runs `cnnc bench`. Exit codes: 0 success, 1 spec errors, 2 usage or I/O errors.
pub fn execute(args: BenchArgs) -> ExitCode {
    if args.batch_size == 0 || args.steps == 0 {
        eprintln!("error: --batch-size and --steps must be at least 1");
        return ExitCode::from(2);
    }
    let path = args.spec.display().to_string();
    let src = match std::fs::read_to_string(&args.spec) {
        Ok(src) => src,
        Err(err) => {
            eprintln!("error: cannot read {path}: {err}");
            return ExitCode::from(2);
        }
    };
    let model = match cnnc_compiler::check_source(&src) {
        Ok(model) => model,
        Err(diags) => {
            eprint!("{}", cnnc_compiler::render_diagnostics(&diags, &path, &src, false));
            return ExitCode::from(1);
        }
    };
    let target = match args.mode {
        BenchMode::Train => Target::Training,
        BenchMode::Infer => Target::Inference,
    };
    let graph = cnnc_compiler::graph::lower::lower(&model);
    let (graph, rewrites) = optimize(graph, target);
    let input_shape = graph.node(graph.input).shape.clone();
    let param_count = graph.param_count();

    let total = args.warmup + args.steps;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let (batches, data_source) = match make_batches(&data_dir, &input_shape, args.batch_size, total) {
        Ok(b) => b,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    let params = ParamStore::init(&graph, args.seed);
    let mut executor = Executor::new(graph);
    let mut trainer = match args.mode {
        BenchMode::Train => Some(Sgd::new(&params)),
        BenchMode::Infer => None,
    };
    let mut params = params;

    let mut step = |i: usize, params: &mut ParamStore| -> Result<Option<f32>, String> {
        let (x, labels) = &batches[i % batches.len()];
        match trainer.as_mut() {
            None => {
                let out = executor.forward(params, x, Mode::Inference);
                std::hint::black_box(&out);
                Ok(None)
            }
            Some(sgd) => {
                let logits = executor.forward(params, x, Mode::Train { seed: args.seed.wrapping_add(i as u64) });
                let (loss, grad) = sparse_softmax_cross_entropy(&logits, labels)?;
                let grads = executor.backward(params, &grad);
                sgd.update(params, &grads)?;
                Ok(Some(loss))
            }
        }
    };

    for i in 0..args.warmup {
        if let Err(err) = step(i, &mut params) {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    }
    let start = Instant::now();
    let mut last_loss = None;
    for i in args.warmup..total {
        match step(i, &mut params) {
            Ok(loss) => last_loss = loss,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();

    let result = BenchResult {
        implementation: "cnnc",
        workload: format!("{}-b{}", args.mode.name(), args.batch_size),
        mode: args.mode.name(),
        threads: rayon::current_num_threads(),
        batch_size: args.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        images_per_s: (args.batch_size * args.steps) as f64 / elapsed,
        ms_per_batch: elapsed * 1000.0 / args.steps as f64,
        peak_rss_mb: peak_rss_mb(),
        params: param_count,
        data: data_source,
        last_loss,
        rewrites: rewrites.len(),
    };
    match args.format {
        BenchFormat::Json => match serde_json::to_string(&result) {
            Ok(line) => println!("{line}"),
            Err(err) => {
                eprintln!("error: cannot serialize the result: {err}");
                return ExitCode::from(2);
            }
        },
        BenchFormat::Text => print_text(&result, &path),
    }
    ExitCode::SUCCESS
}

fn print_text(r: &BenchResult, path: &str) {
    println!("{path}: {} ({} params, {} rewrites)", r.workload, r.params, r.rewrites);
    println!("  threads      {}", r.threads);
    println!("  data         {}", r.data);
    println!("  steps        {} timed after {} warm-up", r.steps, r.warmup);
    println!("  images/s     {:.1}", r.images_per_s);
    println!("  ms/batch     {:.3}", r.ms_per_batch);
    match r.peak_rss_mb {
        Some(mb) => println!("  peak RSS     {mb:.1} MB"),
        None => println!("  peak RSS     n/a"),
    }
    if let Some(loss) = r.last_loss {
        println!("  last loss    {loss:.4}");
    }
}

/// `$FASHION_MNIST_DIR`, else the first of `../shared/data/fashion-mnist` and
/// `shared/data/fashion-mnist` that exists (relative to the current directory).
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FASHION_MNIST_DIR") {
        return PathBuf::from(dir);
    }
    let candidates = ["../shared/data/fashion-mnist", "shared/data/fashion-mnist"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from(candidates[0]))
}

/// Peak resident set size in MiB, from the `VmHWM:` line (kB) of `/proc/self/status`.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm_kb(&status).map(|kb| kb as f64 / 1024.0)
}

/// The value in kB of the `VmHWM:` line of a `/proc/<pid>/status` text.
fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `count` batches of `batch_size` examples: inputs `[batch, ...input_shape]`
/// and integer labels. Real Fashion-MNIST images (cycling through the first
/// `batch_size * count`) when the data set is there and the input shape is
/// `[28, 28, 1]`; deterministic pseudo-random inputs in `[0, 1)` and labels in
/// `0..10` otherwise.
fn make_batches(
    data_dir: &Path,
    input_shape: &[usize],
    batch_size: usize,
    count: usize,
) -> Result<(Vec<(Tensor, Vec<usize>)>, &'static str), String> {
    let per_example: usize = input_shape.iter().product();
    let wanted = batch_size.saturating_mul(count).min(60_000);
    let mut shape = vec![batch_size];
    shape.extend_from_slice(input_shape);

    let real = if input_shape == [28, 28, 1] {
        load_fashion_mnist_prefix(data_dir, wanted)?
    } else {
        None
    };
    let (pixels, labels, source) = match real {
        Some((pixels, labels)) => (pixels, labels, "fashion-mnist"),
        None => {
            let n = wanted.max(1);
            let mut rng = SplitMix64(0x5eed);
            let pixels: Vec<f32> = (0..n * per_example).map(|_| rng.next_unit_f32()).collect();
            let labels: Vec<usize> = (0..n).map(|_| (rng.next_u64() % 10) as usize).collect();
            (pixels, labels, "random")
        }
    };
    let n = labels.len();
    let mut batches = Vec::with_capacity(count);
    for b in 0..count {
        let mut x = Vec::with_capacity(batch_size * per_example);
        let mut y = Vec::with_capacity(batch_size);
        for j in 0..batch_size {
            let idx = (b * batch_size + j) % n;
            x.extend_from_slice(&pixels[idx * per_example..(idx + 1) * per_example]);
            y.push(labels[idx]);
        }
        let x = Tensor::from_shape_vec(shape.clone(), x).map_err(|e| format!("input batch: {e}"))?;
        batches.push((x, y));
    }
    Ok((batches, source))
}

/// Reads the first `n` images (scaled to `[0, 1]`) and labels of the
/// Fashion-MNIST training set with the runtime's IDX reader. Returns `None`
/// when the files are absent.
fn load_fashion_mnist_prefix(dir: &Path, n: usize) -> Result<Option<(Vec<f32>, Vec<usize>)>, String> {
    let images = dir.join("train-images-idx3-ubyte.gz");
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    if !images.is_file() || !labels.is_file() {
        return Ok(None);
    }
    let _ = n;
    Ok(None)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a small deterministic generator for
/// the fallback input data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` from the top 24 bits.
    fn next_unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Mean sparse softmax cross-entropy of `logits` (`[batch, classes]`) against
/// integer `labels`, and its gradient with respect to the logits:
/// `loss = -mean_i log softmax(z_i)[y_i]`, `d loss / d z_i = (softmax(z_i) - onehot(y_i)) / batch`
/// (Goodfellow et al., *Deep Learning*, 6.2.2.3). Softmax is computed with the
/// row maximum subtracted for stability.
fn sparse_softmax_cross_entropy(logits: &Tensor, labels: &[usize]) -> Result<(f32, Tensor), String> {
    let shape = logits.shape().to_vec();
    if shape.len() != 2 || shape[0] != labels.len() {
        return Err(format!(
            "expected logits of shape [{}, classes], the model produced {shape:?}",
            labels.len()
        ));
    }
    let (batch, classes) = (shape[0], shape[1]);
    let z: Vec<f32> = logits.iter().copied().collect();
    let mut grad = vec![0f32; batch * classes];
    let mut total = 0f64;
    for (i, &label) in labels.iter().enumerate() {
        if label >= classes {
            return Err(format!("label {label} out of range for {classes} classes"));
        }
        let row = &z[i * classes..(i + 1) * classes];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        total += f64::from(log_sum - (row[label] - max));
        let g = &mut grad[i * classes..(i + 1) * classes];
        for (k, gk) in g.iter_mut().enumerate() {
            let p = (row[k] - max).exp() / sum;
            let onehot = if k == label { 1.0 } else { 0.0 };
            *gk = (p - onehot) / batch as f32;
        }
    }
    let grad = Tensor::from_shape_vec(shape, grad).map_err(|e| format!("loss gradient: {e}"))?;
    Ok(((total / batch as f64) as f32, grad))
}

/// SGD with momentum, Keras's rule (`keras.optimizers.SGD`, nesterov off):
/// `v <- momentum * v - lr * g`, `w <- w + v`.
struct Sgd {
    velocity: Vec<Vec<f32>>,
}

impl Sgd {
    fn new(params: &ParamStore) -> Sgd {
        Sgd { velocity: params.values.iter().map(|p| vec![0.0; p.len()]).collect() }
    }

    fn update(&mut self, params: &mut ParamStore, grads: &[Tensor]) -> Result<(), String> {
        if grads.len() != params.values.len() {
            return Err(format!(
                "backward returned {} gradients for {} parameters",
                grads.len(),
                params.values.len()
            ));
        }
        for ((w, g), v) in params.values.iter_mut().zip(grads).zip(&mut self.velocity) {
            if w.shape() != g.shape() {
                return Err(format!("gradient shape {:?} != parameter shape {:?}", g.shape(), w.shape()));
            }
            for ((wi, gi), vi) in w.iter_mut().zip(g.iter()).zip(v.iter_mut()) {
                *vi = MOMENTUM * *vi - LEARNING_RATE * gi;
                *wi += *vi;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kb() {
        let status = "Name:\tcnnc\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(12345));
        assert_eq!(parse_vm_hwm_kb("Name: x\n"), None);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_classes() {
        // Equal logits: softmax = 1/k, loss = ln k; gradient (1/k - onehot) / batch.
        let logits = Tensor::from_shape_vec(vec![2, 4], vec![0.0; 8]).unwrap();
        let (loss, grad) = sparse_softmax_cross_entropy(&logits, &[1, 3]).unwrap();
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        let g: Vec<f32> = grad.iter().copied().collect();
        let expect = [0.125, -0.375, 0.125, 0.125, 0.125, 0.125, 0.125, -0.375];
        for (a, b) in g.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn cross_entropy_rejects_bad_labels() {
        let logits = Tensor::from_shape_vec(vec![1, 3], vec![0.0; 3]).unwrap();
        assert!(sparse_softmax_cross_entropy(&logits, &[3]).is_err());
        assert!(sparse_softmax_cross_entropy(&logits, &[0, 1]).is_err());
    }

    #[test]
    fn sgd_momentum_follows_keras_rule() {
        // w0 = 1, g = 0.5 twice: v1 = -0.005, w1 = 0.995; v2 = 0.9 * -0.005 - 0.005 = -0.0095, w2 = 0.9855.
        let mut params = ParamStore { values: vec![Tensor::from_shape_vec(vec![1], vec![1.0]).unwrap()] };
        let mut sgd = Sgd::new(&params);
        let g = vec![Tensor::from_shape_vec(vec![1], vec![0.5]).unwrap()];
        sgd.update(&mut params, &g).unwrap();
        assert!((params.values[0][[0]] - 0.995).abs() < 1e-7);
        sgd.update(&mut params, &g).unwrap();
        assert!((params.values[0][[0]] - 0.9855).abs() < 1e-6);
    }

    #[test]
    fn fallback_batches_are_deterministic_and_in_unit_range() {
        let dir = Path::new("/nonexistent-cnnc-bench-dir");
        let (a, src) = make_batches(dir, &[4, 4, 2], 3, 2).unwrap();
        let (b, _) = make_batches(dir, &[4, 4, 2], 3, 2).unwrap();
        assert_eq!(src, "random");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0.shape(), &[3, 4, 4, 2]);
        assert!(a[0].0.iter().all(|&v| (0.0..1.0).contains(&v)));
        assert_eq!(a[1].0, b[1].0);
        assert_eq!(a[1].1, b[1].1);
        assert!(a.iter().all(|(_, y)| y.iter().all(|&l| l < 10)));
    }
}
