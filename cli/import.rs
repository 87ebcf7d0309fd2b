//! `cnnc import MODEL.onnx [-o DIR] [--name NAME]`: converts a trained ONNX
//! model into an equivalent `.cnn` spec and a cnnc checkpoint
//! (`DIR/NAME.cnn`, `DIR/NAME.safetensors`) with `cnnc_import`.
//! `cnnc import MODEL.h5` does the same for a full Keras model saved in the
//! HDF5 format (`model.save("x.h5")`): a file with the HDF5 signature is
//! read as Keras, anything else as ONNX.
//!
//! The spec is checked by cnnc's own checker before anything is written.
//! Exit codes: 0 on success; 1 when the model cannot be imported (an
//! operator or attribute cnnc cannot express: the message names the ONNX
//! operator type and node; for Keras the layer class and name; a malformed
//! model) or the files cannot be written; 2 when the model file cannot be
//! read.

use cnnc_import::keras::is_hdf5_file;
use cnnc_import::{
    import_keras_file, import_onnx_file, ImportError, ImportOptions, Imported, IoLayout, KerasError,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `cnnc import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The model file: ONNX (.onnx) or a full Keras model in HDF5 (.h5).
    pub model: PathBuf,
    /// Folder to write NAME.cnn and NAME.safetensors into (created if needed).
    #[arg(short = 'o', long = "out", value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Model name in the spec and in the file names (default: the model
    /// file's name without extension, made an identifier).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

pub fn execute(args: ImportArgs) -> ExitCode {
    if args.out.exists() && !args.out.is_dir() {
        eprintln!(
            "error: `-o {}` is a file: give the folder to write the spec and checkpoint into",
            args.out.display()
        );
        return ExitCode::from(2);
    }
    let options = ImportOptions {
        model_name: args.name.clone(),
        source_name: None,
    };
    // By content; a file named .h5 that is not HDF5 gets the Keras error
    // ("not an HDF5 file") rather than the ONNX one.
    let keras = is_hdf5_file(&args.model)
        || args
            .model
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
    let result = if keras {
        import_keras(&args, &options)
    } else {
        import_onnx(&args, &options)
    };
    let imported = match result {
        Ok(imported) => imported,
        Err(code) => return ExitCode::from(code),
    };
    let written = match imported.write(&args.out) {
        Ok(w) => w,
        Err(err) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {err}");
            return ExitCode::from(1);
        }
    };
    let model = &imported.model;
    let mut text = format!(
        "imported {} -> {}, {}\n  {} layers, {} parameters\n",
        args.model.display(),
        written.spec.display(),
        written.checkpoint.display(),
        model.layers.len(),
        model.total_params(),
    );
    for io in &imported.inputs {
        text += &format!(
            "  input `{}` -> `{}` {:?}{}\n",
            io.onnx_name,
            io.cnnc_name,
            io.cnnc_shape,
            if io.layout == IoLayout::ChannelsFirst {
                " (NHWC: transpose NCHW data)"
            } else {
                ""
            }
        );
    }
    for io in &imported.outputs {
        text += &format!(
            "  output `{}` <- `{}` {:?}{}\n",
            io.onnx_name,
            io.cnnc_name,
            io.cnnc_shape,
            if io.layout == IoLayout::ChannelsFirst {
                " (NHWC; ONNX's is NCHW)"
            } else {
                ""
            }
        );
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: cannot write the output: {err}"
            );
            ExitCode::from(1)
        }
    }
}

/// Imports an ONNX model; on failure prints the error and returns the exit code.
fn import_onnx(args: &ImportArgs, options: &ImportOptions) -> Result<Imported, u8> {
    import_onnx_file(&args.model, options).map_err(|err| {
        let mut stderr = std::io::stderr().lock();
        let code = if matches!(err, ImportError::Read { .. }) {
            let _ = writeln!(stderr, "error: {err}");
            2
        } else {
            let _ = writeln!(stderr, "error: {}: {err}", args.model.display());
            1
        };
        if let ImportError::Unsupported { op_type, .. } = &err {
            let _ = writeln!(
                stderr,
                "note: `{}` cannot be imported: cnnc has no equivalent for this use of ONNX `{op_type}`",
                args.model.display()
            );
        }
        code
    })
}

/// Imports a full Keras model (HDF5); on failure prints the error and
/// returns the exit code.
fn import_keras(args: &ImportArgs, options: &ImportOptions) -> Result<Imported, u8> {
    import_keras_file(&args.model, options).map_err(|err| {
        let mut stderr = std::io::stderr().lock();
        let code = if matches!(err, KerasError::Read { .. }) {
            let _ = writeln!(stderr, "error: {err}");
            2
        } else {
            let _ = writeln!(stderr, "error: {}: {err}", args.model.display());
            1
        };
        if let KerasError::Unsupported { class_name, .. } = &err {
            let _ = writeln!(
                stderr,
                "note: `{}` cannot be imported: cnnc has no equivalent for this use of Keras `{class_name}`",
                args.model.display()
            );
        }
        code
    })
}
