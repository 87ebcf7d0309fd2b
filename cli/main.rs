//! `cnnc`: the command-line front of the cnnc compiler and runtime.
//!
//! A thin layer: it parses arguments (clap), calls the libraries, and renders
//! results and errors for people. Exit codes: 0 success, 1 spec or run-file
//! errors, 2 usage errors (bad arguments, unreadable files).

mod bench;
mod build;
mod import;
mod memory;
mod output;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Declarative CNN compiler and CPU runtime.
#[derive(Parser, Debug)]
#[command(name = "cnnc", version, about)]
struct Cli {
    /// Worker threads for the runtime (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and shape-check a .cnn spec; print its summary or optimized op graph.
    Build(build::BuildArgs),
    /// Train, evaluate or predict as a YAML run file says.
    Run(run::RunArgs),
    /// Measure training or inference throughput of a spec.
    Bench(bench::BenchArgs),
    /// Convert an ONNX model or a Keras .h5 model into a .cnn spec and a cnnc checkpoint.
    Import(import::ImportArgs),
}

/// More worker threads than this only adds start-up and scheduling cost.
const MAX_THREADS: usize = 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        if threads == 0 || threads > MAX_THREADS {
            eprintln!("error: --threads must be between 1 and {MAX_THREADS}, found {threads}");
            return ExitCode::from(2);
        }
        if let Err(err) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("error: could not start {threads} worker threads: {err}");
            return ExitCode::from(2);
        }
    }
    match cli.command {
        Command::Build(args) => build::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Bench(args) => bench::execute(args),
        Command::Import(args) => import::execute(args),
    }
}
