//! `cnnc build FILE`: check a spec and print its summary or op graph.

use cnnc_compiler::graph::{dump, lower, passes};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The Keras-style summary (layers, output shapes, parameters, FLOPs).
    Summary,
    /// The optimized op graph.
    Graph,
    /// Graphviz DOT of the model (layers, shapes on the edges): `| dot -Tpng > model.png`.
    Dot,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphTarget {
    /// Forward only: dropout removed, fusions applied.
    Inference,
    /// Forward and backward: fusions applied, dropout kept.
    Training,
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The .cnn spec file.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Emit::Summary)]
    pub emit: Emit,
    /// Which graph to optimize for, with `--emit graph` (default: inference).
    #[arg(long, value_enum)]
    pub target: Option<GraphTarget>,
    /// With `--emit graph`: the unoptimized (lowered) graph, no passes.
    #[arg(long)]
    pub no_optimize: bool,
    /// With `--emit graph`: list every pass of the pipeline, what it
    /// rewrites and where it must not apply, and each rewrite it made.
    #[arg(long)]
    pub explain: bool,
    /// The batch size the summary's activation-memory figures are given for
    /// (default 32).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
}

pub fn execute(args: BuildArgs) -> ExitCode {
    if args.emit != Emit::Graph && (args.target.is_some() || args.no_optimize || args.explain) {
        eprintln!(
            "error: --target, --no-optimize and --explain apply to the op graph: add `--emit graph`"
        );
        return ExitCode::from(2);
    }
    if args.explain && args.no_optimize {
        eprintln!("error: --explain lists the passes, which --no-optimize turns off: drop one");
        return ExitCode::from(2);
    }
    if args.batch_size.is_some() && args.emit != Emit::Summary {
        eprintln!("error: --batch-size sizes the summary's activation memory: drop `--emit`");
        return ExitCode::from(2);
    }
    let batch_size = args.batch_size.unwrap_or(32);
    if batch_size == 0 {
        eprintln!("error: --batch-size must be at least 1");
        return ExitCode::from(2);
    }
    let path = args.file.display().to_string();
    let source = match std::fs::read_to_string(&args.file) {
        Ok(source) => source,
        Err(err) => {
            eprintln!("error: cannot read spec `{path}`: {err}");
            return ExitCode::from(2);
        }
    };
    let (sources, checked) = cnnc_compiler::check_file(&args.file, &source);
    let model = match checked {
        Ok(model) => model,
        Err(diagnostics) => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            eprint!("{}", sources.render(&diagnostics, color));
            return ExitCode::from(1);
        }
    };
    let text = match (args.emit, args.format) {
        (Emit::Summary, Format::Text) => {
            let mut text = cnnc_compiler::summary::render_text(&model);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text + &memory_text(&memory_report(&model, batch_size))
        }
        (Emit::Summary, Format::Json) => {
            let mut json = cnnc_compiler::summary::to_json(&model);
            if let Some(map) = json.as_object_mut() {
                let report = memory_report(&model, batch_size);
                map.insert(
                    "activation_memory".into(),
                    serde_json::to_value(&report).unwrap_or_default(),
                );
            }
            pretty(&json)
        }
        (Emit::Dot, Format::Text) => cnnc_compiler::dot::render(&model),
        (Emit::Dot, Format::Json) => {
            eprintln!("error: `--emit dot` writes DOT text; drop `--format json`");
            return ExitCode::from(2);
        }
        (Emit::Graph, format) => {
            let graph = match lower::try_lower(&model) {
                Ok(graph) => graph,
                Err(err) => {
                    eprintln!(
                        "error: {}: {err}; declare a fixed input size to see the op graph",
                        args.file.display()
                    );
                    return ExitCode::from(1);
                }
            };
            let target = match args.target.unwrap_or(GraphTarget::Inference) {
                GraphTarget::Inference => passes::Target::Inference,
                GraphTarget::Training => passes::Target::Training,
            };
            let (graph, rewrites) = if args.no_optimize {
                (graph, Vec::new())
            } else {
                passes::optimize(graph, target)
            };
            match format {
                Format::Text if args.explain => {
                    dump::render_text(&graph, &[]) + &explain_text(target, &rewrites)
                }
                Format::Text => dump::render_text(&graph, &rewrites),
                Format::Json => {
                    let mut json = dump::to_json(&graph, &rewrites);
                    if args.explain {
                        if let Some(map) = json.as_object_mut() {
                            map.insert("passes".into(), explain_json(target, &rewrites));
                        }
                    }
                    pretty(&json)
                }
            }
        }
    };
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    crate::output::write_stdout(&format!("{text}{newline}"))
}

/// The passes of `target`'s pipeline, in order, each with what it does and
/// the rewrites it made (`--emit graph --explain`).
fn explain_text(target: passes::Target, rewrites: &[passes::Rewrite]) -> String {
    let mut out = format!("passes ({}):\n", target_name(target));
    for pass in passes::pipeline(target) {
        let made: Vec<&passes::Rewrite> =
            rewrites.iter().filter(|r| r.rule == pass.name()).collect();
        out += &format!("  {} ({} rewrites)\n", pass.name(), made.len());
        out += &format!("    what: {}\n", pass.explain());
        for r in made {
            out += &format!("    - {}\n", r.description);
        }
    }
    out
}

fn explain_json(target: passes::Target, rewrites: &[passes::Rewrite]) -> serde_json::Value {
    passes::pipeline(target)
        .iter()
        .map(|pass| {
            let made: Vec<&str> = rewrites
                .iter()
                .filter(|r| r.rule == pass.name())
                .map(|r| r.description.as_str())
                .collect();
            serde_json::json!({"name": pass.name(), "explain": pass.explain(), "rewrites": made})
        })
        .collect()
}

fn target_name(target: passes::Target) -> &'static str {
    match target {
        passes::Target::Inference => "inference",
        passes::Target::Training => "training",
    }
}

/// Activation memory of a model, from the memory plan of its optimized
/// inference graph and the buffers training keeps (`None` fields when the
/// input size is not fixed).
#[derive(serde::Serialize)]
struct MemoryReport {
    batch_size: usize,
    /// Bytes per image of the inference memory plan (buffers reused once dead).
    inference_bytes_per_image: Option<usize>,
    /// The same without reuse (one buffer per op).
    inference_unplanned_bytes_per_image: Option<usize>,
    /// Bytes per image kept in training: every op's output (for backward)
    /// and the activation gradients' buffers, shared by lifetime
    /// (`cnnc_compiler::graph::memory::plan_training_gradients`).
    training_bytes_per_image: Option<usize>,
    /// How many gradient buffers the training plan shares out.
    training_gradient_buffers: Option<usize>,
    /// The same as `training_bytes_per_image` with one gradient buffer per
    /// op that receives a gradient (no reuse).
    training_unplanned_bytes_per_image: Option<usize>,
    /// `inference_bytes_per_image * batch_size`.
    inference_bytes: Option<usize>,
    /// `training_bytes_per_image * batch_size`.
    training_bytes: Option<usize>,
}

fn memory_report(model: &cnnc_compiler::model::Model, batch_size: usize) -> MemoryReport {
    let none = MemoryReport {
        batch_size,
        inference_bytes_per_image: None,
        inference_unplanned_bytes_per_image: None,
        training_bytes_per_image: None,
        training_gradient_buffers: None,
        training_unplanned_bytes_per_image: None,
        inference_bytes: None,
        training_bytes: None,
    };
    let Ok(graph) = lower::try_lower(model) else {
        return none;
    };
    let (inference, _) = passes::optimize(graph.clone(), passes::Target::Inference);
    let plan = cnnc_compiler::graph::memory::plan_inference(&inference);
    let (training, _) = passes::optimize(graph, passes::Target::Training);
    let kept = cnnc_compiler::graph::memory::plan_inference(&training).unplanned_len;
    let grads = cnnc_compiler::graph::memory::plan_training_gradients(&training);
    let train = (kept + grads.planned_len) * 4;
    MemoryReport {
        batch_size,
        inference_bytes_per_image: Some(plan.planned_bytes(1)),
        inference_unplanned_bytes_per_image: Some(plan.unplanned_len * 4),
        training_bytes_per_image: Some(train),
        training_gradient_buffers: Some(grads.slot_len.len()),
        training_unplanned_bytes_per_image: Some((kept + grads.unplanned_len) * 4),
        inference_bytes: Some(plan.planned_bytes(batch_size)),
        training_bytes: Some(train * batch_size),
    }
}

/// `1.2 MB` / `340 KB` (decimal units, as Keras prints sizes).
fn bytes_text(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} KB", b / 1e3)
    }
}

fn memory_text(r: &MemoryReport) -> String {
    let (Some(inf), Some(unplanned), Some(train), Some(buffers), Some(train_unplanned)) = (
        r.inference_bytes_per_image,
        r.inference_unplanned_bytes_per_image,
        r.training_bytes_per_image,
        r.training_gradient_buffers,
        r.training_unplanned_bytes_per_image,
    ) else {
        return "Activation memory: depends on the input size (declare a fixed input size)\n"
            .into();
    };
    let n = r.batch_size;
    format!(
        "Activation memory, inference: {} per image, {} at batch {n} (memory plan; {} per image without buffer reuse)\n\
         Activation memory, training: {} per image, {} at batch {n} (outputs kept for backward, gradients in {buffers} shared buffer{}; {} per image without reuse)\n",
        bytes_text(inf),
        bytes_text(inf * n),
        bytes_text(unplanned),
        bytes_text(train),
        bytes_text(train * n),
        if buffers == 1 { "" } else { "s" },
        bytes_text(train_unplanned),
    )
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
