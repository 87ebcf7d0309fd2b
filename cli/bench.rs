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
//!   `[batch, 28, 28, 1]`, read with `cnnc_runtime::data`; without the data
//!   files it is deterministic pseudo-random data in `[0, 1)` of the spec's
//!   input shape;
//! - a training step is forward (dropout active, logits out) ->
//!   `loss::sparse_categorical_crossentropy` (mean, gradient on the logits) ->
//!   backward -> `optim::Optimizer` step with SGD (lr 0.01, momentum 0.9);
//! - an inference step is one forward pass in [`Mode::Inference`];
//! - `warmup` steps run untimed, then `steps` steps are timed.
//!
//! Peak RSS is `VmHWM` from `/proc/self/status` (Linux; absent elsewhere),
//! counted from after the data is loaded (the runtime's IDX reader
//! decompresses the whole file, which the TF side does not do).

use cnnc_compiler::graph::passes::{optimize, Target};
use cnnc_runtime::data::Dataset;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::loss::sparse_categorical_crossentropy;
use cnnc_runtime::optim::{Optimizer, OptimizerConfig, SgdConfig};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The book's optimizer: `SGD(learning_rate=0.01, momentum=0.9)`.
const SGD: SgdConfig = SgdConfig {
    learning_rate: 0.01,
    momentum: 0.9,
    nesterov: false,
    decay: 0.0,
};

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
    /// Whether the peak-RSS count was restarted after the data was loaded
    /// (`/proc/self/clear_refs`), so the full-file read does not count.
    peak_rss_reset_after_load: bool,
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
    let (sources, checked) = cnnc_compiler::check_file(std::path::Path::new(&path), &src);
    let model = match checked {
        Ok(model) => model,
        Err(diags) => {
            eprint!("{}", sources.render(&diags, false));
            return ExitCode::from(1);
        }
    };
    let target = match args.mode {
        BenchMode::Train => Target::Training,
        BenchMode::Infer => Target::Inference,
    };
    let graph = match cnnc_compiler::graph::lower::try_lower(&model) {
        Ok(graph) => graph,
        Err(err) => {
            eprintln!("error: {path}: {err}; benchmarks need a fixed input size");
            return ExitCode::from(1);
        }
    };
    let (graph, rewrites) = optimize(graph, target);
    let input_shape = graph.node(graph.input).shape.clone();
    let param_count = graph.param_count();
    if let Err(err) = crate::memory::check_fits(&graph, args.batch_size, target == Target::Training)
    {
        eprintln!("error: {err}");
        return ExitCode::from(1);
    }

    let total = args.warmup + args.steps;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let (batches, data_source) = match make_batches(&data_dir, &input_shape, args.batch_size, total)
    {
        Ok(b) => b,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    // Loading the whole IDX file is a transient the TF side does not have
    // (it decompresses only the prefix it uses): start the peak-RSS count here.
    let rss_reset = reset_peak_rss();

    let mut params = ParamStore::init(&graph, args.seed);
    let mut trainer = match args.mode {
        BenchMode::Train => match Optimizer::new(OptimizerConfig::Sgd(SGD), &graph.params) {
            Ok(opt) => Some(opt),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        BenchMode::Infer => None,
    };
    let mut executor = Executor::new(graph);

    if let Err(err) = executor.validate() {
        eprintln!("error: {err}");
        return ExitCode::from(1);
    }
    // Output and gradient buffers are reused from step to step, as a training
    // loop does (`forward_into`, `backward_into`).
    let mut output = Tensor::zeros(vec![0]);
    let mut grads: Vec<Tensor> = Vec::new();
    let mut step = |i: usize, params: &mut ParamStore| -> Result<Option<f32>, String> {
        let (x, labels) = &batches[i % batches.len()];
        match trainer.as_mut() {
            None => {
                executor
                    .forward_into(params, x, Mode::Inference, &mut output)
                    .map_err(|e| e.to_string())?;
                std::hint::black_box(&output);
                Ok(None)
            }
            Some(sgd) => {
                let seed = args.seed.wrapping_add(i as u64);
                executor
                    .forward_into(params, x, Mode::Train { seed }, &mut output)
                    .map_err(|e| e.to_string())?;
                let loss =
                    sparse_categorical_crossentropy(&output, labels).map_err(|e| e.to_string())?;
                executor
                    .backward_into(params, &loss.grad_logits, &mut grads)
                    .map_err(|e| e.to_string())?;
                sgd.step(params, &grads).map_err(|e| e.to_string())?;
                Ok(Some(loss.loss))
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
        peak_rss_reset_after_load: rss_reset,
        params: param_count,
        data: data_source,
        last_loss,
        rewrites: rewrites.len(),
    };
    let text = match args.format {
        BenchFormat::Json => match serde_json::to_string(&result) {
            Ok(line) => format!("{line}\n"),
            Err(err) => {
                eprintln!("error: cannot serialize the result: {err}");
                return ExitCode::from(2);
            }
        },
        BenchFormat::Text => text_report(&result, &path),
    };
    crate::output::write_stdout(&text)
}

fn text_report(r: &BenchResult, path: &str) -> String {
    let mut out = format!(
        "{path}: {} ({} params, {} rewrites)\n",
        r.workload, r.params, r.rewrites
    );
    out += &format!("  threads      {}\n", r.threads);
    out += &format!("  data         {}\n", r.data);
    out += &format!(
        "  steps        {} timed after {} warm-up\n",
        r.steps, r.warmup
    );
    out += &format!("  images/s     {:.1}\n", r.images_per_s);
    out += &format!("  ms/batch     {:.3}\n", r.ms_per_batch);
    match r.peak_rss_mb {
        Some(mb) => out += &format!("  peak RSS     {mb:.1} MB\n"),
        None => out += "  peak RSS     n/a\n",
    }
    if let Some(loss) = r.last_loss {
        out += &format!("  last loss    {loss:.4}\n");
    }
    out
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

/// Restarts the kernel's peak-RSS count at the current RSS (writing `5` to
/// `/proc/self/clear_refs`, Linux >= 4.0). Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The value in kB of the `VmHWM:` line of a `/proc/<pid>/status` text.
fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One input batch `[batch, ...input shape]` and its labels.
type Batch = (Tensor, Vec<usize>);

/// Flattened NHWC pixels of `n` examples and their `n` labels.
type Examples = (Vec<f32>, Vec<usize>);

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
) -> Result<(Vec<Batch>, &'static str), String> {
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
        let x =
            Tensor::from_shape_vec(shape.clone(), x).map_err(|e| format!("input batch: {e}"))?;
        batches.push((x, y));
    }
    Ok((batches, source))
}

/// The first `n` images (scaled to `[0, 1]`, flattened NHWC) and labels of
/// the Fashion-MNIST training set, read with the runtime's IDX reader.
/// Returns `None` when the files are absent.
fn load_fashion_mnist_prefix(dir: &Path, n: usize) -> Result<Option<Examples>, String> {
    let images = dir.join("train-images-idx3-ubyte.gz");
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    if !images.is_file() || !labels.is_file() {
        return Ok(None);
    }
    let prefix = {
        let full = Dataset::load_idx(&images, &labels).map_err(|e| e.to_string())?;
        full.take(n)
    };
    if prefix.is_empty() {
        return Ok(None);
    }
    let Dataset { images, labels } = prefix;
    Ok(Some((images.iter().copied().collect(), labels)))
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

    #[test]
    fn real_batches_take_the_prefix_and_cycle() {
        // Three 28x28 images, image i filled with 50 * i, labels 7, 8, 9; two
        // batches of 2 need 4 examples, so the fourth is image 0 again.
        let dir = std::env::temp_dir().join(format!("cnnc-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = (0..3u8)
            .flat_map(|i| std::iter::repeat_n(50 * i, 28 * 28))
            .collect();
        let images = cnnc_runtime::data::idx::encode_images(3, 28, 28, &pixels);
        let labels = cnnc_runtime::data::idx::encode_labels(&[7, 8, 9]);
        // The reader detects gzip by its magic bytes, so raw IDX under the .gz names works.
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), images).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), labels).unwrap();
        let (batches, src) = make_batches(&dir, &[28, 28, 1], 2, 2).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(src, "fashion-mnist");
        assert_eq!(batches[0].1, vec![7, 8]);
        assert_eq!(batches[1].1, vec![9, 7]);
        let first = |t: &Tensor, i: usize| t.iter().nth(i * 28 * 28).copied().unwrap();
        assert_eq!(batches[0].0.shape(), &[2, 28, 28, 1]);
        assert_eq!(first(&batches[0].0, 1), 50.0 / 255.0);
        assert_eq!(first(&batches[1].0, 0), 100.0 / 255.0);
        assert_eq!(first(&batches[1].0, 1), 0.0);
    }
}
