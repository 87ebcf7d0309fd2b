//! `cnnc run` (placeholder until its helper lands it).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Input file.
    pub file: std::path::PathBuf,
}

pub fn execute(args: RunArgs) -> ExitCode {
    eprintln!("cnnc run: not available yet ({})", args.file.display());
    ExitCode::from(2)
}
