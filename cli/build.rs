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
}

pub fn execute(args: BuildArgs) -> ExitCode {
    if args.emit != Emit::Graph && (args.target.is_some() || args.no_optimize) {
        eprintln!("error: --target and --no-optimize apply to the op graph: add `--emit graph`");
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
        (Emit::Summary, Format::Text) => cnnc_compiler::summary::render_text(&model),
        (Emit::Summary, Format::Json) => pretty(&cnnc_compiler::summary::to_json(&model)),
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
            let (graph, rewrites) = if args.no_optimize {
                (graph, Vec::new())
            } else {
                let target = match args.target.unwrap_or(GraphTarget::Inference) {
                    GraphTarget::Inference => passes::Target::Inference,
                    GraphTarget::Training => passes::Target::Training,
                };
                passes::optimize(graph, target)
            };
            match format {
                Format::Text => dump::render_text(&graph, &rewrites),
                Format::Json => pretty(&dump::to_json(&graph, &rewrites)),
            }
        }
    };
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    crate::output::write_stdout(&format!("{text}{newline}"))
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
