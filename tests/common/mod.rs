//! Helpers shared by the `cnnc` binary's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The repository root (where `specs/` and `data/` are).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Absolute path of a file of the shipped Fashion-MNIST sample.
pub fn sample(name: &str) -> String {
    root()
        .join("data/fashion-mnist-sample")
        .join(name)
        .display()
        .to_string()
}

/// Runs the `cnnc` binary with `args` from the repository root.
pub fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("cnnc runs")
}

/// [`cnnc`], asserting that it exits with success (its stderr otherwise).
pub fn cnnc_ok(args: &[&str]) -> Output {
    let out = cnnc(args);
    assert!(
        out.status.success(),
        "cnnc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
