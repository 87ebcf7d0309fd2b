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
//!   input shape, in at most 4 batches that the steps cycle through;
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
use cnnc_runtime::params::{model_params, InferenceParams, ParamStore};
use cnnc_runtime::tensor::Tensor;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod profile;
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
    /// The `.cnn` spec to benchmark (not needed with `--fma-peak`).
    #[arg(required_unless_present = "fma_peak")]
    pub spec: Option<PathBuf>,

    /// Instead of a spec, measure this machine's FP32 fused-multiply-add
    /// peak (GFLOP/s) with independent AVX-512 (else AVX2 + FMA) chains, on
    /// 1 thread and on `--threads` threads (default: one per core).
    #[arg(long, conflicts_with = "spec")]
    pub fma_peak: bool,

    /// Seconds each `--fma-peak` repetition runs (3 repetitions per thread
    /// count; the best one is reported).
    #[arg(long, default_value_t = 0.3, value_name = "SECONDS")]
    pub fma_seconds: f64,

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

    /// Run the graph as lowered, without the optimization passes (to see
    /// what the passes gain, or to check another runtime against the
    /// unfused ops).
    #[arg(long)]
    pub no_optimize: bool,

    /// Take the parameters from this `.safetensors` checkpoint (cnnc's
    /// parameter names and Keras layouts, as `cnnc run` saves them) instead
    /// of initialising them.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Inference only: after timing, run the first batch once more and
    /// write it and its output to FILE as safetensors (F32 tensors `input`,
    /// NHWC `[batch, h, w, c]`, and `output`, `[batch, ...]`), so another
    /// runtime's output on the same input and weights can be compared
    /// (`bench/export_onnx.py --verify`).
    #[arg(long, value_name = "FILE")]
    pub dump_io: Option<PathBuf>,

    /// After timing, run `--steps` more steps with per-node timing and
    /// print where a step's time goes: each node's mean forward (and, for
    /// training, backward) milliseconds and its share.
    #[arg(long)]
    pub profile: bool,
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
    /// CPU time of all the process's threads during the timed steps
    /// (seconds; Linux only).
    cpu_s: Option<f64>,
    /// `cpu_s / wall time`: how many cores the timed steps kept busy.
    cores_used: Option<f64>,
    /// Whether the peak-RSS count was restarted after the data was loaded
    /// (`/proc/self/clear_refs`), so the full-file read does not count.
    peak_rss_reset_after_load: bool,
    params: usize,
    /// Seconds to initialise (or load) the parameters and, for inference,
    /// prepare them (`InferenceParams::prepare`); not part of the timing.
    prepare_s: f64,
    /// The spec's model name (`fashion_mnist`, `resnet50`, ...).
    model: String,
    /// Per-example input shape (NHWC without the batch).
    input_shape: Vec<usize>,
    /// Forward FLOPs per image, as `cnnc build --format json` counts them
    /// (`Model::flops`: 2 x multiply-adds of conv and dense layers plus one
    /// per element for bias, activation, pooling, batch norm, ...). A
    /// training step costs about 3x this per image (forward, input gradient,
    /// kernel gradient).
    flops_per_image: u64,
    /// `fashion-mnist` or `random`.
    data: &'static str,
    /// Mean loss of the last timed training step (None for inference).
    last_loss: Option<f32>,
    /// Rewrites made by the optimization passes.
    rewrites: usize,
    /// `--profile`: mean per-step time of each node that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<profile::NodeProfile>>,
    /// `--profile`: mean wall time of a whole profiled step, milliseconds
    /// (the nodes plus what runs between them: loss, optimizer step).
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_step_ms: Option<f64>,
}

/// The parameters a step runs with.
enum StepParams {
    /// Training: the model's parameters and the optimizer updating them.
    Train(ParamStore, Optimizer),
    /// Inference: the parameters prepared once for the inference graph.
    Infer(InferenceParams),
}

/// Runs `cnnc bench`. Exit codes: 0 success, 1 spec errors, 2 usage or I/O errors.
pub fn execute(args: BenchArgs) -> ExitCode {
    if args.fma_peak {
        return fma::execute(args.fma_seconds, args.format);
    }
    let Some(spec) = args.spec.as_deref() else {
        eprintln!("error: a spec is required (or --fma-peak)");
        return ExitCode::from(2);
    };
    if args.batch_size == 0 || args.steps == 0 {
        eprintln!("error: --batch-size and --steps must be at least 1");
        return ExitCode::from(2);
    }
    let path = spec.display().to_string();
    let src = match std::fs::read_to_string(spec) {
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
            eprintln!("error: {path}: {err}; declare a fixed input size to benchmark it");
            return ExitCode::from(1);
        }
    };
    let flops_per_image = model.flops();
    let (graph, rewrites) = if args.no_optimize {
        (graph, Vec::new())
    } else {
        optimize(graph, target)
    };
    let input_shape = graph.node(graph.input).shape.clone();
    let model_name = graph.name.clone();
    // The model's own parameters (Keras's total), not the folded copies an
    // inference graph adds.
    let param_count: usize = model_params(&graph).iter().map(|p| p.len()).sum();
    if let Err(err) = crate::memory::check_fits(&graph, args.batch_size, target == Target::Training)
    {
        eprintln!("error: {err}");
        return ExitCode::from(1);
    }

    let total = args.warmup + args.steps;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // Random labels must be valid classes of the model's output.
    let classes = graph.node(graph.output).shape.last().copied().unwrap_or(1);
    let (batches, data_source) =
        match make_batches(&data_dir, &input_shape, args.batch_size, total, classes) {
            Ok(b) => b,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };

    // Loading the whole IDX file is a transient the TF side does not have
    // (it decompresses only the prefix it uses): start the peak-RSS count here.
    let rss_reset = reset_peak_rss();

    if args.dump_io.is_some() && args.mode != BenchMode::Infer {
        eprintln!("error: --dump-io needs --mode infer");
        return ExitCode::from(2);
    }
    let prepare_start = Instant::now();
    let model = match &args.weights {
        None => ParamStore::init(&graph, args.seed),
        Some(file) => match cnnc_runtime::checkpoint::load(file, model_params(&graph)) {
            Ok(params) => params,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
        },
    };
    // Inference runs on parameters prepared once, as a deployed model is
    // (folded batch norms computed, kernels packed for the GEMM): the
    // counterpart of ONNX Runtime's session initialisation, not timed.
    let mut state = match args.mode {
        BenchMode::Train => match Optimizer::new(OptimizerConfig::Sgd(SGD), &graph.params) {
            Ok(opt) => StepParams::Train(model, opt),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        BenchMode::Infer => match InferenceParams::prepare(&graph, model) {
            Ok(prepared) => StepParams::Infer(prepared),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
        },
    };
    let prepare_s = prepare_start.elapsed().as_secs_f64();
    // Inference runs on the memory plan's shared buffers; training keeps
    // every activation for the backward pass.
    let mut executor = match args.mode {
        BenchMode::Train => Executor::new(graph),
        BenchMode::Infer => Executor::for_inference(graph),
    };

    if let Err(err) = executor.validate() {
        eprintln!("error: {err}");
        return ExitCode::from(1);
    }
    // Output and gradient buffers are reused from step to step, as a training
    // loop does (`forward_into`, `backward_into`).
    let mut output = Tensor::zeros(vec![0]);
    let mut grads: Vec<Tensor> = Vec::new();
    let mut step = |executor: &mut Executor,
                    i: usize,
                    state: &mut StepParams|
     -> Result<Option<f32>, String> {
        let (x, labels) = &batches[i % batches.len()];
        match state {
            StepParams::Infer(prepared) => {
                executor
                    .forward_into(prepared, x, Mode::Inference, &mut output)
                    .map_err(|e| e.to_string())?;
                std::hint::black_box(&output);
                Ok(None)
            }
            StepParams::Train(params, sgd) => {
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
        if let Err(err) = step(&mut executor, i, &mut state) {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    }
    let cpu_before = process_cpu_s();
    let start = Instant::now();
    let mut last_loss = None;
    for i in args.warmup..total {
        match step(&mut executor, i, &mut state) {
            Ok(loss) => last_loss = loss,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = match (cpu_before, process_cpu_s()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };

    let (node_profile, profile_step_ms) = if args.profile {
        let mut acc = profile::Profile::new(executor.graph());
        executor.set_profiling(true);
        let profile_start = Instant::now();
        for i in args.warmup..total {
            if let Err(err) = step(&mut executor, i, &mut state) {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
            if let Some(times) = executor.profile() {
                acc.add_step(times);
            }
        }
        let step_ms = profile_start.elapsed().as_secs_f64() * 1e3 / acc.steps().max(1) as f64;
        executor.set_profiling(false);
        (Some(acc.rows()), Some(step_ms))
    } else {
        (None, None)
    };

    if let (Some(file), StepParams::Infer(prepared)) = (&args.dump_io, &state) {
        let x = &batches[0].0;
        if let Err(err) = executor.forward_into(prepared, x, Mode::Inference, &mut output) {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
        let tensors = [("input", x), ("output", &output)];
        if let Err(err) = std::fs::write(file, safetensors_bytes(&tensors)) {
            eprintln!("error: cannot write {}: {err}", file.display());
            return ExitCode::from(2);
        }
    }

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
        cpu_s,
        cores_used: cpu_s.map(|c| c / elapsed),
        peak_rss_reset_after_load: rss_reset,
        params: param_count,
        prepare_s,
        model: model_name,
        input_shape: input_shape.clone(),
        flops_per_image,
        data: data_source,
        last_loss,
        rewrites: rewrites.len(),
        profile: node_profile,
        profile_step_ms,
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
        "{path}: {} ({} params, {} rewrite{})\n",
        r.workload,
        r.params,
        r.rewrites,
        if r.rewrites == 1 { "" } else { "s" }
    );
    out += &format!("  threads      {}\n", r.threads);
    out += &format!("  data         {}\n", r.data);
    out += &format!(
        "  steps        {} timed after {} warm-up\n",
        r.steps, r.warmup
    );
    out += &format!("  images/s     {:.1}\n", r.images_per_s);
    out += &format!("  ms/batch     {:.3}\n", r.ms_per_batch);
    let step_flops = match r.mode {
        "train" => 3.0 * r.flops_per_image as f64,
        _ => r.flops_per_image as f64,
    };
    out += &format!(
        "  GFLOP/s      {:.1} ({:.3} GFLOP per image forward{})\n",
        r.images_per_s * step_flops / 1e9,
        r.flops_per_image as f64 / 1e9,
        if r.mode == "train" {
            ", x3 for a training step"
        } else {
            ""
        }
    );
    match r.peak_rss_mb {
        Some(mb) => out += &format!("  peak RSS     {mb:.1} MB\n"),
        None => out += "  peak RSS     n/a\n",
    }
    if let Some(cores) = r.cores_used {
        out += &format!("  cores used   {cores:.2}\n");
    }
    if let Some(loss) = r.last_loss {
        out += &format!("  last loss    {loss:.4}\n");
    }
    if let Some(rows) = &r.profile {
        out += &profile::render(rows, r.steps, r.profile_step_ms);
    }
    out
}

/// The safetensors encoding of F32 tensors (format: an 8-byte little-endian
/// header length, a JSON header `{name: {"dtype", "shape", "data_offsets"}}`
/// padded with spaces to a multiple of 8, then the little-endian data).
fn safetensors_bytes(tensors: &[(&str, &Tensor)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let len = t.len() * 4;
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.shape(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, t) in tensors {
        for v in t.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
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

/// CPU time in seconds of every thread of this process so far: the sum of
/// the first field (on-CPU nanoseconds) of `/proc/self/task/*/schedstat`.
/// `None` where there is no such file (not Linux).
fn process_cpu_s() -> Option<f64> {
    let mut total_ns: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total_ns += fma::parse_schedstat_ns(&text)?;
    }
    Some(total_ns as f64 * 1e-9)
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

/// Most distinct batches of random data a benchmark cycles through.
const RANDOM_BATCHES: usize = 4;

/// One input batch `[batch, ...input shape]` and its labels.
type Batch = (Tensor, Vec<usize>);

/// Flattened NHWC pixels of `n` examples and their `n` labels.
type Examples = (Vec<f32>, Vec<usize>);

/// The batches the timed steps cycle through, each of `batch_size`
/// examples: inputs `[batch, ...input_shape]` and integer labels. Real
/// Fashion-MNIST images (`count` batches, cycling through the first
/// `batch_size * count`) when the data set is there and the input shape is
/// `[28, 28, 1]` and the model has 10 classes; otherwise at most
/// [`RANDOM_BATCHES`] batches of deterministic pseudo-random inputs in
/// `[0, 1)` and labels in `0..classes` (as the peers' scripts feed one
/// input over and over: a batch per step would hold e.g. 18 MB of
/// ResNet-50 inputs at batch 8 in the measured peak RSS).
fn make_batches(
    data_dir: &Path,
    input_shape: &[usize],
    batch_size: usize,
    count: usize,
    classes: usize,
) -> Result<(Vec<Batch>, &'static str), String> {
    let per_example: usize = input_shape.iter().product();
    let wanted = batch_size.saturating_mul(count).min(60_000);
    let mut shape = vec![batch_size];
    shape.extend_from_slice(input_shape);

    let real = if input_shape == [28, 28, 1] && classes == 10 {
        load_fashion_mnist_prefix(data_dir, wanted)?
    } else {
        None
    };
    let (pixels, labels, source) = match real {
        Some((pixels, labels)) => (pixels, labels, "fashion-mnist"),
        None => {
            let n = batch_size
                .saturating_mul(count.min(RANDOM_BATCHES))
                .clamp(1, 60_000);
            let mut rng = SplitMix64(0x5eed);
            let pixels: Vec<f32> = (0..n * per_example).map(|_| rng.next_unit_f32()).collect();
            let labels: Vec<usize> = (0..n)
                .map(|_| (rng.next_u64() % classes.max(1) as u64) as usize)
                .collect();
            (pixels, labels, "random")
        }
    };
    let n = labels.len();
    let count = if source == "random" {
        count.min(RANDOM_BATCHES)
    } else {
        count
    };
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

/// `cnnc bench --fma-peak`: the machine's measured FP32 fused-multiply-add
/// peak, the denominator of the "% of peak" column of `bench/run.sh`.
///
/// Each thread runs `CHAINS` independent accumulator chains
/// `acc_i = a * b + acc_i` of packed FP32 FMAs in a loop (inline assembly, so
/// the compiler can neither drop nor reorder them). An FMA has a latency of
/// about 4 cycles and a server core issues up to 2 per cycle, so at least 8
/// chains must be in flight to keep both FMA pipes busy; 16 (AVX-512, `zmm`)
/// or 12 (AVX2, `ymm`, 16 registers) are used. One FMA on `L` lanes counts
/// as `2 L` FLOP (a multiply and an add, the usual convention), so a core
/// with two 16-lane FMA pipes peaks at `64 x clock` GFLOP/s.
mod fma {
    use super::BenchFormat;
    use serde::Serialize;
    use std::process::ExitCode;
    use std::sync::Barrier;
    use std::time::Instant;

    /// The widest FMA instruction set available at run time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Isa {
        /// AVX-512F `vfmadd231ps zmm`: 16 f32 lanes, 16 chains.
        Avx512,
        /// AVX2 + FMA3 `vfmadd231ps ymm`: 8 f32 lanes, 12 chains.
        Avx2Fma,
    }

    impl Isa {
        /// Detected with `is_x86_feature_detected!`; `None` without FMA.
        pub fn detect() -> Option<Isa> {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Some(Isa::Avx512);
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Some(Isa::Avx2Fma);
                }
            }
            None
        }

        pub fn name(self) -> &'static str {
            match self {
                Isa::Avx512 => "avx512f",
                Isa::Avx2Fma => "avx2+fma",
            }
        }

        /// f32 lanes per FMA instruction.
        pub fn lanes(self) -> u64 {
            match self {
                Isa::Avx512 => 16,
                Isa::Avx2Fma => 8,
            }
        }

        /// Independent accumulator chains per loop iteration.
        pub fn chains(self) -> u64 {
            match self {
                Isa::Avx512 => 16,
                Isa::Avx2Fma => 12,
            }
        }

        /// FLOPs of one loop iteration: chains x lanes x 2.
        pub fn flops_per_iteration(self) -> u64 {
            self.chains() * self.lanes() * 2
        }

        /// Runs `iterations` loop iterations (at least 1).
        fn run(self, iterations: u64) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` returned this ISA, so the CPU has the features
            // the functions are compiled for; the assembly only touches the
            // registers it declares as clobbered.
            unsafe {
                match self {
                    Isa::Avx512 => fma_chains_avx512(iterations.max(1)),
                    Isa::Avx2Fma => fma_chains_avx2(iterations.max(1)),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = iterations;
        }
    }

    /// 16 chains of `vfmadd231ps zmm`, `iterations` times (>= 1).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_chains_avx512(iterations: u64) {
        // SAFETY: register-only arithmetic on declared clobbers; the caller
        // guarantees AVX-512F and iterations >= 1 (the loop runs until the
        // counter reaches 0 after a decrement).
        unsafe {
            std::arch::asm!(
                "vpxord zmm0, zmm0, zmm0",
                "vpxord zmm1, zmm1, zmm1",
                "vpxord zmm2, zmm2, zmm2",
                "vpxord zmm3, zmm3, zmm3",
                "vpxord zmm4, zmm4, zmm4",
                "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6",
                "vpxord zmm7, zmm7, zmm7",
                "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9",
                "vpxord zmm10, zmm10, zmm10",
                "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12",
                "vpxord zmm13, zmm13, zmm13",
                "vpxord zmm14, zmm14, zmm14",
                "vpxord zmm15, zmm15, zmm15",
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "2:",
                "vfmadd231ps zmm0, zmm16, zmm17",
                "vfmadd231ps zmm1, zmm16, zmm17",
                "vfmadd231ps zmm2, zmm16, zmm17",
                "vfmadd231ps zmm3, zmm16, zmm17",
                "vfmadd231ps zmm4, zmm16, zmm17",
                "vfmadd231ps zmm5, zmm16, zmm17",
                "vfmadd231ps zmm6, zmm16, zmm17",
                "vfmadd231ps zmm7, zmm16, zmm17",
                "vfmadd231ps zmm8, zmm16, zmm17",
                "vfmadd231ps zmm9, zmm16, zmm17",
                "vfmadd231ps zmm10, zmm16, zmm17",
                "vfmadd231ps zmm11, zmm16, zmm17",
                "vfmadd231ps zmm12, zmm16, zmm17",
                "vfmadd231ps zmm13, zmm16, zmm17",
                "vfmadd231ps zmm14, zmm16, zmm17",
                "vfmadd231ps zmm15, zmm16, zmm17",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iterations => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                out("zmm16") _, out("zmm17") _,
                options(nostack, nomem),
            );
        }
    }

    /// 12 chains of `vfmadd231ps ymm`, `iterations` times (>= 1).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_chains_avx2(iterations: u64) {
        // SAFETY: as for `fma_chains_avx512`, with AVX2 + FMA guaranteed.
        unsafe {
            std::arch::asm!(
                "vxorps ymm0, ymm0, ymm0",
                "vxorps ymm1, ymm1, ymm1",
                "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3",
                "vxorps ymm4, ymm4, ymm4",
                "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6",
                "vxorps ymm7, ymm7, ymm7",
                "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9",
                "vxorps ymm10, ymm10, ymm10",
                "vxorps ymm11, ymm11, ymm11",
                "vxorps ymm12, ymm12, ymm12",
                "vxorps ymm13, ymm13, ymm13",
                "2:",
                "vfmadd231ps ymm0, ymm12, ymm13",
                "vfmadd231ps ymm1, ymm12, ymm13",
                "vfmadd231ps ymm2, ymm12, ymm13",
                "vfmadd231ps ymm3, ymm12, ymm13",
                "vfmadd231ps ymm4, ymm12, ymm13",
                "vfmadd231ps ymm5, ymm12, ymm13",
                "vfmadd231ps ymm6, ymm12, ymm13",
                "vfmadd231ps ymm7, ymm12, ymm13",
                "vfmadd231ps ymm8, ymm12, ymm13",
                "vfmadd231ps ymm9, ymm12, ymm13",
                "vfmadd231ps ymm10, ymm12, ymm13",
                "vfmadd231ps ymm11, ymm12, ymm13",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iterations => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _,
                options(nostack, nomem),
            );
        }
    }

    /// One thread count's figure.
    #[derive(Debug, Serialize)]
    pub struct PeakRow {
        pub threads: usize,
        /// All threads together: total FLOPs / the slowest thread's wall time.
        pub gflops: f64,
        /// `gflops / threads`.
        pub gflops_per_thread: f64,
        /// Per thread, FLOPs / the thread's own on-CPU time (from
        /// `/proc/thread-self/schedstat`), averaged over the threads: the
        /// core's speed while it runs the loop, unaffected by time slices
        /// other processes take on a busy machine. `None` off Linux.
        pub gflops_per_core_on_cpu: Option<f64>,
    }

    /// What `--fma-peak --format json` prints.
    #[derive(Debug, Serialize)]
    struct PeakReport {
        #[serde(rename = "impl")]
        implementation: &'static str,
        workload: &'static str,
        isa: &'static str,
        vector_lanes: u64,
        chains: u64,
        flops_per_fma_lane: u64,
        seconds_per_repetition: f64,
        repetitions: usize,
        results: Vec<PeakRow>,
    }

    const REPETITIONS: usize = 3;

    /// Nanoseconds the calling thread has spent on a CPU: the first field of
    /// `/proc/thread-self/schedstat` (Linux `sched_info`).
    fn thread_cpu_ns() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        parse_schedstat_ns(&text)
    }

    /// The on-CPU nanoseconds (first field) of a `schedstat` line.
    pub(super) fn parse_schedstat_ns(text: &str) -> Option<u64> {
        text.split_whitespace().next()?.parse().ok()
    }

    /// Loop iterations that take about `seconds` on one thread.
    fn calibrate(isa: Isa, seconds: f64) -> u64 {
        let mut iterations: u64 = 1 << 16;
        loop {
            let start = Instant::now();
            isa.run(iterations);
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed >= 0.02 || iterations >= 1 << 40 {
                let scaled = iterations as f64 * seconds / elapsed.max(1e-9);
                return scaled.clamp(1.0, (1u64 << 40) as f64) as u64;
            }
            iterations *= 4;
        }
    }

    /// Best of [`REPETITIONS`] runs of `iterations` on each of `threads`
    /// threads started together (a barrier).
    pub fn measure(isa: Isa, threads: usize, iterations: u64) -> PeakRow {
        let per_thread = (isa.flops_per_iteration() * iterations) as f64;
        let mut best_wall = 0.0f64;
        let mut best_on_cpu: Option<f64> = None;
        for _ in 0..REPETITIONS {
            let barrier = Barrier::new(threads);
            let timings: Vec<(f64, Option<f64>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            let cpu0 = thread_cpu_ns();
                            let start = Instant::now();
                            isa.run(iterations);
                            let wall = start.elapsed().as_secs_f64();
                            let cpu = match (cpu0, thread_cpu_ns()) {
                                (Some(a), Some(b)) if b > a => Some((b - a) as f64 * 1e-9),
                                _ => None,
                            };
                            (wall, cpu)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or((f64::INFINITY, None)))
                    .collect()
            });
            let slowest = timings.iter().map(|t| t.0).fold(0.0f64, f64::max);
            best_wall = best_wall.max(per_thread * threads as f64 / slowest.max(1e-9) / 1e9);
            let on_cpu: Option<Vec<f64>> = timings
                .iter()
                .map(|t| t.1.map(|cpu| per_thread / cpu / 1e9))
                .collect();
            if let Some(rates) = on_cpu {
                let mean = rates.iter().sum::<f64>() / rates.len() as f64;
                best_on_cpu = Some(best_on_cpu.map_or(mean, |b: f64| b.max(mean)));
            }
        }
        PeakRow {
            threads,
            gflops: best_wall,
            gflops_per_thread: best_wall / threads as f64,
            gflops_per_core_on_cpu: best_on_cpu,
        }
    }

    /// Thread counts measured: 1 and the runtime's (`--threads`, default
    /// one per core), without repeats.
    fn thread_counts() -> Vec<usize> {
        let n = rayon::current_num_threads().max(1);
        if n == 1 {
            vec![1]
        } else {
            vec![1, n]
        }
    }

    pub fn execute(seconds: f64, format: BenchFormat) -> ExitCode {
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= 60.0) {
            eprintln!("error: --fma-seconds must be in (0, 60], found {seconds}");
            return ExitCode::from(2);
        }
        let Some(isa) = Isa::detect() else {
            eprintln!("error: --fma-peak needs an x86-64 CPU with AVX-512F or AVX2 + FMA");
            return ExitCode::from(2);
        };
        let iterations = calibrate(isa, seconds);
        let results: Vec<PeakRow> = thread_counts()
            .into_iter()
            .map(|t| measure(isa, t, iterations))
            .collect();
        let report = PeakReport {
            implementation: "cnnc",
            workload: "fma-peak",
            isa: isa.name(),
            vector_lanes: isa.lanes(),
            chains: isa.chains(),
            flops_per_fma_lane: 2,
            seconds_per_repetition: seconds,
            repetitions: REPETITIONS,
            results,
        };
        let text = match format {
            BenchFormat::Json => match serde_json::to_string(&report) {
                Ok(line) => format!("{line}\n"),
                Err(err) => {
                    eprintln!("error: cannot serialize the result: {err}");
                    return ExitCode::from(2);
                }
            },
            BenchFormat::Text => {
                let mut out = format!(
                    "FP32 FMA peak ({}, {} lanes x {} chains, best of {}):\n",
                    report.isa, report.vector_lanes, report.chains, report.repetitions
                );
                for r in &report.results {
                    out += &format!(
                        "  {} thread{}  {:.1} GFLOP/s ({:.1} per thread",
                        r.threads,
                        if r.threads == 1 { " " } else { "s" },
                        r.gflops,
                        r.gflops_per_thread
                    );
                    if let Some(core) = r.gflops_per_core_on_cpu {
                        out += &format!("; {core:.1} per core while on a CPU");
                    }
                    out += ")\n";
                }
                out
            }
        };
        crate::output::write_stdout(&text)
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
        let (a, src) = make_batches(dir, &[4, 4, 2], 3, 2, 10).unwrap();
        let (b, _) = make_batches(dir, &[4, 4, 2], 3, 2, 10).unwrap();
        assert_eq!(src, "random");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0.shape(), &[3, 4, 4, 2]);
        assert!(a[0].0.iter().all(|&v| (0.0..1.0).contains(&v)));
        assert_eq!(a[1].0, b[1].0);
        assert_eq!(a[1].1, b[1].1);
        assert!(a.iter().all(|(_, y)| y.iter().all(|&l| l < 10)));
        // A 5-class model (e.g. flowers5) gets labels 0..5 only.
        let (c, _) = make_batches(dir, &[4, 4, 2], 8, 2, 5).unwrap();
        assert!(c.iter().all(|(_, y)| y.iter().all(|&l| l < 5)));
        // Many steps cycle through a few batches of random data.
        let (d, _) = make_batches(dir, &[4, 4, 2], 3, 50, 10).unwrap();
        assert_eq!(d.len(), RANDOM_BATCHES);
        assert_eq!(d[1].0, a[1].0);
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
        let (batches, src) = make_batches(&dir, &[28, 28, 1], 2, 2, 10).unwrap();
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

    /// `cnnc bench`'s arguments on their own, for parsing tests.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn fma_peak_needs_no_spec_and_excludes_one() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["bench", "--fma-peak"]).unwrap();
        assert!(cli.args.fma_peak);
        assert!(cli.args.spec.is_none());
        assert!(Cli::try_parse_from(["bench"]).is_err());
        assert!(Cli::try_parse_from(["bench", "a.cnn", "--fma-peak"]).is_err());
        let cli = Cli::try_parse_from(["bench", "a.cnn", "--no-optimize"]).unwrap();
        assert_eq!(cli.args.spec.as_deref(), Some(Path::new("a.cnn")));
        assert!(cli.args.no_optimize);
    }

    #[test]
    fn fma_flops_per_iteration_count_two_per_lane() {
        // 16 chains x 16 lanes x (multiply + add); 12 chains x 8 lanes x 2.
        assert_eq!(fma::Isa::Avx512.flops_per_iteration(), 512);
        assert_eq!(fma::Isa::Avx2Fma.flops_per_iteration(), 192);
    }

    #[test]
    fn fma_measure_reports_consistent_rates() {
        let Some(isa) = fma::Isa::detect() else {
            return;
        };
        let row = fma::measure(isa, 2, 1 << 12);
        assert_eq!(row.threads, 2);
        assert!(row.gflops > 0.0 && row.gflops.is_finite());
        assert!((row.gflops_per_thread * 2.0 - row.gflops).abs() <= 1e-9 * row.gflops);
    }

    #[test]
    fn schedstat_first_field_is_on_cpu_ns() {
        assert_eq!(fma::parse_schedstat_ns("247303 2854806 1\n"), Some(247_303));
        assert_eq!(fma::parse_schedstat_ns(""), None);
        assert_eq!(fma::parse_schedstat_ns("x 1 2"), None);
    }

    #[test]
    fn safetensors_layout_is_header_then_little_endian_data() {
        let a = Tensor::from_shape_vec(vec![1, 2], vec![1.0, -2.0]).unwrap();
        let b = Tensor::from_shape_vec(vec![1], vec![0.5]).unwrap();
        let bytes = safetensors_bytes(&[("input", &a), ("output", &b)]);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["input"]["shape"], serde_json::json!([1, 2]));
        assert_eq!(header["input"]["data_offsets"], serde_json::json!([0, 8]));
        assert_eq!(header["output"]["data_offsets"], serde_json::json!([8, 12]));
        let data = &bytes[8 + n..];
        assert_eq!(data.len(), 12);
        assert_eq!(&data[4..8], &(-2.0f32).to_le_bytes());
        assert_eq!(&data[8..12], &0.5f32.to_le_bytes());
    }
}
