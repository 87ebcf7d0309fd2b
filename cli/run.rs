//! `cnnc run RUNFILE.yaml`: train, evaluate or predict as a YAML run file says.
//!
//! ```yaml
//! spec: fashion_mnist.cnn
//! mode: train            # train | evaluate | predict
//! data:
//!   format: idx
//!   train_images: ../data/fashion-mnist-sample/train-images-idx3-ubyte.gz
//!   train_labels: ../data/fashion-mnist-sample/train-labels-idx1-ubyte.gz
//!   test_images: ../data/fashion-mnist-sample/t10k-images-idx3-ubyte.gz
//!   test_labels: ../data/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz
//!   validation_split: 500      # the last N training images, or a fraction like 0.1
//!   class_names: [T-shirt/top, Trouser, ...]
//! optimizer: { name: sgd, learning_rate: 0.01, momentum: 0.9, decay: 0.0 }
//! loss: sparse_categorical_crossentropy
//! metrics: [accuracy]
//! batch_size: 32
//! epochs: 2
//! seed: 42
//! checkpoint: ../out/fashion_mnist.safetensors
//! history: ../out/fashion_mnist_history.json
//! predict: { inputs: [shirt.png], count: 10 }
//! ```
//!
//! The schema, defaults and `--set` rules are in [`config`]. `optimizer` may
//! also be a bare name (`optimizer: adam`) for that optimizer's defaults.
//!
//! `data.format: folder` reads a class-per-folder image directory, split per
//! class into train / validation / test and streamed through the image
//! pipeline ([`folder`]); `weights` starts training from pretrained
//! parameters matched by name, and `phases` trains in several `fit` calls
//! that freeze and unfreeze layers ([`phases`], [`train`]). Predict takes
//! JPEG / PNG files and prints the `predict.top` most probable classes.
//!
//! The output of the last layer, before a final softmax, is treated as
//! logits (like Keras's `from_logits=True`): training and evaluation compute
//! the cross-entropy from it, and predict reports softmax(logits) as the
//! probabilities, whether or not the spec ends in `softmax`.
//!
//! Training checks before it starts that `checkpoint` and `history` are
//! writable files distinct from every input, then saves both right after the
//! last epoch, before the test evaluation.
//!
//! Exit codes: 0 on success (also when stdout is closed early, as by
//! `| head`); 1 when the run file, the spec, the data or a checkpoint is
//! invalid, training diverges, or output cannot be written; 2 for usage
//! errors (a malformed `--set`, a file that cannot be read, a `.cnn` spec
//! given instead of a run file).

mod config;
mod folder;
mod phases;
mod progress;
mod train;

use cnnc_compiler::graph::{lower, passes, Graph};
use cnnc_runtime::checkpoint::{self, CheckpointError};
use cnnc_runtime::data::folder::{BatchSource, FolderSource};
use cnnc_runtime::data::{self, DataError, Dataset};
use cnnc_runtime::params::{model_params, InferenceParams};
use cnnc_runtime::tensor::Tensor;
use cnnc_runtime::train::{Classifier, Evaluation, TrainError};
use config::{LoadedRunFile, MetricName, RunMode};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Output format of `cnnc run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Keras-style progress and results for people.
    Text,
    /// One JSON object on stdout at the end (progress goes to stderr).
    Json,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The YAML run file (e.g. specs/fashion_mnist.yaml), not the .cnn spec.
    ///
    /// The output of the last layer, before a final softmax, is treated as
    /// logits (like Keras's from_logits=True); predict reports softmax(logits).
    pub file: PathBuf,
    /// Override a run-file field (repeatable), e.g. `--set epochs=1`,
    /// `--set optimizer.learning_rate=0.05`, `--set data.train_images=/path`.
    /// Values are YAML; paths given here are relative to the current directory.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Why `cnnc run` stopped: the exit code and the message for stderr.
#[derive(Debug)]
pub struct Failure {
    pub exit: u8,
    pub message: String,
    /// The message is a complete report (spec diagnostics): print it as is.
    pub rendered: bool,
}

impl Failure {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit: 2,
            message: message.into(),
            rendered: false,
        }
    }

    /// Invalid run file, spec, data or checkpoint (exit 1).
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            exit: 1,
            message: message.into(),
            rendered: false,
        }
    }

    /// Stop quietly with exit 0: the reader of stdout has gone (`| head`).
    pub fn quiet() -> Failure {
        Failure {
            exit: 0,
            message: String::new(),
            rendered: true,
        }
    }
}

pub fn execute(args: RunArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.exit == 0 => ExitCode::SUCCESS,
        Err(failure) => {
            // Never panic on a closed stderr either.
            let mut stderr = std::io::stderr().lock();
            let _ = if failure.rendered {
                write!(stderr, "{}", failure.message)
            } else {
                writeln!(stderr, "error: {}", failure.message)
            };
            ExitCode::from(failure.exit)
        }
    }
}

/// Writes `text` to stdout: a closed pipe is a quiet stop (exit 0), any
/// other error (a full disk, `> /dev/full`) a failure (exit 1).
fn write_stdout(text: &str) -> Result<(), Failure> {
    crate::output::try_write_stdout(text).map_err(|err| match err {
        crate::output::StdoutError::Closed => Failure::quiet(),
        crate::output::StdoutError::Failed(err) => {
            Failure::invalid(format!("cannot write to standard output: {err}"))
        }
    })
}

/// Prints human-readable lines to stdout in text mode, to stderr in JSON mode
/// (where stdout carries only the final JSON object).
struct Out {
    format: Format,
}

impl Out {
    fn line(&self, text: impl std::fmt::Display) -> Result<(), Failure> {
        match self.format {
            Format::Text => write_stdout(&format!("{text}\n")),
            Format::Json => {
                // Progress notes only: a closed stderr must not stop the run.
                let _ = writeln!(std::io::stderr(), "{text}");
                Ok(())
            }
        }
    }

    fn json(&self, value: serde_json::Value) -> Result<(), Failure> {
        if self.format == Format::Json {
            let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
            write_stdout(&format!("{text}\n"))?;
        }
        Ok(())
    }
}

/// The compiled model: the checked model (training phases re-lower it
/// with their trainability) and its inference graph.
struct Compiled {
    name: String,
    model: cnnc_compiler::model::Model,
    inference: Graph,
    input_shape: Vec<usize>,
    classes: usize,
    class_names: Vec<String>,
}

fn run(args: &RunArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let run_file = config::load(&args.file, &args.set)?;
    let out = Out {
        format: args.format,
    };
    let config = &run_file.config;
    if config.batch_size == 0 {
        return Err(run_file.invalid_at(
            "batch_size",
            "batch_size must be at least 1 (Keras's default is 32)",
        ));
    }
    config.optimizer.validate().map_err(|err| match &err {
        cnnc_runtime::optim::OptimError::BadSetting { field, .. } => {
            run_file.invalid_at(&format!("optimizer.{field}"), format!("optimizer: {err}"))
        }
        _ => run_file.invalid_at("optimizer", format!("optimizer: {err}")),
    })?;
    if config.data.format == config::DataFormat::Idx {
        let data = &config.data;
        for (key, set) in [
            ("data.directory", data.directory.is_some()),
            ("data.test_split", data.test_split.is_some()),
            ("data.cache", data.cache.is_some()),
            ("data.augment", data.augment != Default::default()),
        ] {
            if set {
                return Err(run_file.invalid_at(
                    key,
                    format!(
                        "`{key}` is for image folders, but data.format is idx (the default); \
                         add `format: folder` under `data:`"
                    ),
                ));
            }
        }
    }
    let compiled = compile(&run_file)?;
    match config.mode {
        RunMode::Train => train::train(&run_file, compiled, &out, args.format, started),
        RunMode::Evaluate => evaluate(&run_file, compiled, &out, started),
        RunMode::Predict => predict(&run_file, compiled, &out, started),
    }
}

/// Reads and checks the spec, lowers it and runs the passes for both targets.
fn compile(run_file: &LoadedRunFile) -> Result<Compiled, Failure> {
    let path = run_file.resolve("spec", &run_file.config.spec);
    let shown = path.display().to_string();
    let source = std::fs::read_to_string(&path).map_err(|err| {
        Failure::usage(format!(
            "cannot read spec `{shown}` (`spec` in {}): {err}",
            run_file.path.display()
        ))
    })?;
    let (sources, checked) = cnnc_compiler::check_file(&path, &source);
    let model = checked.map_err(|diagnostics| Failure {
        exit: 1,
        message: sources.render(&diagnostics, std::io::stderr().is_terminal()),
        rendered: true,
    })?;
    if model.inputs.len() != 1 || model.outputs.len() != 1 {
        return Err(Failure::invalid(format!(
            "{shown}: the model has {} input{} and {} output{}; `cnnc run` trains and runs \
             classifiers with one input and one output (several inputs or weighted \
             multi-output losses are not supported by run files yet); `cnnc build` checks \
             and summarizes the model",
            model.inputs.len(),
            if model.inputs.len() == 1 { "" } else { "s" },
            model.outputs.len(),
            if model.outputs.len() == 1 { "" } else { "s" },
        )));
    }
    let graph = lower::try_lower(&model).map_err(|e| {
        Failure::invalid(format!(
            "{shown}: {e}; `cnnc run` needs a model with a fixed input size, e.g. `input [28, 28, 1]`"
        ))
    })?;
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    let output_shape: Vec<usize> = graph_sizes(model.output_shape());
    let [classes] = output_shape[..] else {
        return Err(Failure::invalid(format!(
            "{shown}: the model output has shape {output_shape:?}; `cnnc run` trains \
             classifiers, whose last layer is dense(units = classes)"
        )));
    };
    let data = &run_file.config.data;
    let (names_key, names) = match (&data.class_names, &data.class_names_file) {
        (Some(_), Some(_)) => {
            return Err(run_file.invalid_at(
                "data.class_names_file",
                "data.class_names and data.class_names_file are both set; keep one",
            ))
        }
        (Some(names), None) => ("data.class_names", Some(names.clone())),
        (None, Some(file)) => {
            let path = run_file.resolve("data.class_names_file", file);
            let names = folder::read_class_names(&path).map_err(|err| {
                if path.is_file() {
                    run_file.invalid_at("data.class_names_file", err)
                } else {
                    Failure::usage(format!(
                        "{err} (`data.class_names_file` in {})",
                        run_file.path.display()
                    ))
                }
            })?;
            ("data.class_names_file", Some(names))
        }
        (None, None) => ("data.class_names", None),
    };
    let class_names = match names {
        Some(names) if names.len() != classes => {
            return Err(run_file.invalid_at(
                names_key,
                format!(
                    "{names_key} has {} but the model `{}` has {}; give one name per class, in label order",
                    plural(names.len(), "name"),
                    model.name,
                    plural(classes, "class")
                ),
            ))
        }
        Some(names) => names,
        None => (0..classes).map(|c| c.to_string()).collect(),
    };
    Ok(Compiled {
        name: model.name.clone(),
        inference,
        input_shape: graph_sizes(&model.input_shape),
        classes,
        class_names,
        model,
    })
}

/// `1 class`, `2 classes`, `1 name`, `3 names`.
fn plural(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        _ => format!("{n} {noun}s"),
    }
}

/// Maps a data error to a failure naming the run-file field.
fn data_failure(run_file: &LoadedRunFile, key: &str, err: DataError) -> Failure {
    let message = format!("{err} (`{key}` in {})", run_file.path.display());
    match err {
        DataError::Io { .. } => Failure::usage(message),
        _ => Failure::invalid(message),
    }
}

fn checkpoint_failure(err: CheckpointError) -> Failure {
    match err {
        CheckpointError::Io { .. } => Failure::usage(err.to_string()),
        _ => Failure::invalid(err.to_string()),
    }
}

fn train_failure(err: TrainError) -> Failure {
    Failure::invalid(err.to_string())
}

/// Loads an images/labels pair named by `data.<prefix>_images` and
/// `data.<prefix>_labels`, applies the limit and checks labels and shapes.
fn load_pair(
    run_file: &LoadedRunFile,
    compiled: &Compiled,
    prefix: &str,
    limit: Option<usize>,
) -> Result<Option<Dataset>, Failure> {
    let data = &run_file.config.data;
    // Image folders are read by `folder::load` (train, evaluate, predict).
    if data.format == config::DataFormat::Folder {
        return Ok(None);
    }
    let (images, labels) = match prefix {
        "train" => (&data.train_images, &data.train_labels),
        _ => (&data.test_images, &data.test_labels),
    };
    let images_key = format!("data.{prefix}_images");
    let labels_key = format!("data.{prefix}_labels");
    let (images, labels) = match (images, labels) {
        (None, None) => return Ok(None),
        (Some(images), Some(labels)) => (
            run_file.resolve(&images_key, images),
            run_file.resolve(&labels_key, labels),
        ),
        (Some(_), None) => {
            return Err(run_file.invalid(format!("`{images_key}` is set but `{labels_key}` is not")))
        }
        (None, Some(_)) => {
            return Err(run_file.invalid(format!("`{labels_key}` is set but `{images_key}` is not")))
        }
    };
    let mut dataset = Dataset::load_idx(&images, &labels).map_err(|err| {
        // Blame by the kind of file that was expected where the error says
        // (the same path may be given for both keys).
        let key = match &err {
            DataError::BadMagic { kind: "labels", .. } => &labels_key,
            DataError::BadMagic { .. } => &images_key,
            _ if err.path() == Some(images.as_path()) => &images_key,
            _ if err.path() == Some(labels.as_path()) => &labels_key,
            _ => &images_key,
        };
        data_failure(run_file, key, err)
    })?;
    if let Some(limit) = limit {
        dataset = dataset.take(limit);
    }
    dataset
        .check_labels(compiled.classes, &labels)
        .map_err(|err| data_failure(run_file, &labels_key, err))?;
    if dataset.example_shape() != compiled.input_shape.as_slice() {
        return Err(run_file.invalid(format!(
            "`{}` holds images of shape {:?} but the model `{}` expects {:?} (`{images_key}`)",
            images.display(),
            dataset.example_shape(),
            compiled.name,
            compiled.input_shape
        )));
    }
    Ok(Some(dataset))
}

/// Thousands separators, as Keras's summary (`1,413,834`).
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether two paths name the same file: by canonical path when both exist,
/// else by absolute lexical path.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => match (std::path::absolute(a), std::path::absolute(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        },
        // One exists and the other does not: different files.
        _ => false,
    }
}

/// The output paths of mode `train` (`checkpoint`, `history`), resolved.
fn outputs(run_file: &LoadedRunFile) -> Vec<(&'static str, PathBuf)> {
    let config = &run_file.config;
    let mut out = Vec::new();
    if let Some(p) = &config.checkpoint {
        out.push(("checkpoint", run_file.resolve("checkpoint", p)));
    }
    if let Some(p) = &config.history {
        out.push(("history", run_file.resolve("history", p)));
    }
    out
}

/// Before training: `history` ends in `.json` or `.csv`; the outputs are
/// neither an input (spec, run file, data) nor each other; they are not
/// folders (nor is the `.tmp` file they are written through) and their
/// folders exist or can be created.
fn check_outputs(run_file: &LoadedRunFile) -> Result<(), Failure> {
    let config = &run_file.config;
    let outputs = outputs(run_file);
    for (key, path) in &outputs {
        if *key == "history"
            && !path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("csv"))
        {
            return Err(run_file.invalid_at(
                key,
                format!(
                    "history `{}` must end in .json or .csv (the format is chosen by the extension)",
                    path.display()
                ),
            ));
        }
    }
    let mut inputs: Vec<(String, PathBuf)> = vec![
        ("the run file".to_string(), run_file.path.clone()),
        (
            "the spec (`spec`)".to_string(),
            run_file.resolve("spec", &config.spec),
        ),
    ];
    let data = &config.data;
    for (key, value) in [
        ("data.train_images", &data.train_images),
        ("data.train_labels", &data.train_labels),
        ("data.test_images", &data.test_images),
        ("data.test_labels", &data.test_labels),
    ] {
        if let Some(p) = value {
            inputs.push((format!("`{key}`"), run_file.resolve(key, p)));
        }
    }
    for (key, path) in &outputs {
        for (what, input) in &inputs {
            if same_file(path, input) {
                return Err(run_file.invalid_at(
                    key,
                    format!(
                        "`{key}` is `{}`, the same file as {what}: training would overwrite it; \
                         choose another path",
                        path.display()
                    ),
                ));
            }
        }
    }
    if let [(_, checkpoint), (_, history)] = &outputs[..] {
        if same_file(checkpoint, history) {
            return Err(run_file.invalid_at(
                "history",
                format!(
                    "`history` and `checkpoint` are the same file `{}`; give them different paths",
                    history.display()
                ),
            ));
        }
    }
    for (key, path) in &outputs {
        let temporary = checkpoint::temporary_path(path);
        for target in [path, &temporary] {
            if target.is_dir() {
                return Err(run_file.invalid_at(
                    key,
                    format!(
                        "`{key}` would write `{}`, which is a folder; give a file path \
                         (e.g. out/model.safetensors), or remove the folder",
                        target.display()
                    ),
                ));
            }
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                // Name the part of the path that is a file, if that is why.
                let why = parent
                    .ancestors()
                    .find(|a| a.is_file())
                    .map(|file| format!("`{}` is a file, not a folder", file.display()))
                    .unwrap_or_else(|| err.to_string());
                run_file.invalid_at(
                    key,
                    format!(
                        "cannot create the folder `{}` for `{key}`: {why}; choose another path",
                        parent.display()
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// An empty data set is an error naming the key that emptied it.
fn check_not_empty(
    run_file: &LoadedRunFile,
    prefix: &str,
    limit: Option<usize>,
    dataset: &Dataset,
) -> Result<(), Failure> {
    if !dataset.is_empty() {
        return Ok(());
    }
    Err(if limit == Some(0) {
        let key = format!("data.{prefix}_limit");
        run_file.invalid_at(
            &key,
            format!(
                "`{key}` is 0, which leaves no {prefix} images; remove it or set it to 1 or more"
            ),
        )
    } else {
        let key = format!("data.{prefix}_images");
        run_file.invalid_at(
            &key,
            format!("`{key}` holds no images; point it at a non-empty IDX file"),
        )
    })
}

fn metrics_line(prefix: &str, evaluation: &Evaluation, show_accuracy: bool) -> String {
    let mut line = format!("{prefix}loss: {:.4}", evaluation.loss);
    if show_accuracy {
        line += &format!(" - {prefix}accuracy: {:.4}", evaluation.accuracy);
    }
    line
}

/// Loads the model's parameters for evaluate / predict from `key` (a path
/// field) and prepares them for the inference graph (folded batch norms
/// computed, the parameters it no longer reads dropped, kernels packed).
fn load_checkpoint(
    run_file: &LoadedRunFile,
    key: &str,
    path: Option<&PathBuf>,
    compiled: &Compiled,
) -> Result<(PathBuf, InferenceParams), Failure> {
    let mode = run_file.config.mode.name();
    let Some(path) = path else {
        return Err(run_file.invalid(format!(
            "mode `{mode}` needs a checkpoint: set `checkpoint` (written by mode `train`)"
        )));
    };
    let path = run_file.resolve(key, path);
    // A checkpoint holds the model's own parameters: the inference graph's
    // folded ones are computed from them.
    let params = checkpoint::load(&path, model_params(&compiled.inference)).map_err(|err| {
        let failure = checkpoint_failure(err);
        match failure.exit {
            2 => Failure::usage(format!(
                "{} (train first, with mode: train)",
                failure.message
            )),
            _ => failure,
        }
    })?;
    let params = InferenceParams::prepare(&compiled.inference, params).map_err(|err| {
        Failure::invalid(format!(
            "checkpoint `{}` does not fit the model: {err}",
            path.display()
        ))
    })?;
    Ok((path, params))
}

/// The test part of a `format: folder` data set (the same per-class split
/// as training, from the run's seed), optionally cut to `data.test_limit`.
fn folder_test_split(
    run_file: &LoadedRunFile,
    compiled: &mut Compiled,
) -> Result<FolderSource, Failure> {
    let pipeline = folder::pipeline(run_file, &compiled.input_shape)?;
    let parts = folder::load(
        run_file,
        pipeline,
        compiled.classes,
        rayon::current_num_threads(),
    )?;
    let data = &run_file.config.data;
    if data.class_names.is_none() && data.class_names_file.is_none() {
        compiled.class_names = parts.class_names;
    }
    let mut test = parts.test;
    if let Some(limit) = run_file.config.data.test_limit {
        let keep: Vec<usize> = (0..test.len().min(limit)).collect();
        test = FolderSource::new(test.list().subset(&keep), pipeline, test.threads())
            .map_err(|e| folder::folder_failure(run_file, e))?;
    }
    if test.is_empty() {
        return Err(run_file.invalid_at(
            "data.test_split",
            "the test split is empty: set data.test_split above 0 (the seed uses 0.1)",
        ));
    }
    Ok(test)
}

fn evaluate(
    run_file: &LoadedRunFile,
    mut compiled: Compiled,
    out: &Out,
    started: Instant,
) -> Result<(), Failure> {
    let config = &run_file.config;
    let (checkpoint_path, params) = load_checkpoint(
        run_file,
        "checkpoint",
        config.checkpoint.as_ref(),
        &compiled,
    )?;
    let mut classifier = Classifier::new(compiled.inference.clone()).map_err(train_failure)?;
    let evaluation = match config.data.format {
        config::DataFormat::Idx => {
            let Some(test) = load_pair(run_file, &compiled, "test", config.data.test_limit)? else {
                return Err(run_file
                    .invalid("mode `evaluate` needs `data.test_images` and `data.test_labels`"));
            };
            check_not_empty(run_file, "test", config.data.test_limit, &test)?;
            classifier.evaluate(&params, &test, config.batch_size)
        }
        config::DataFormat::Folder => {
            let test = folder_test_split(run_file, &mut compiled)?;
            classifier.evaluate_source(&params, &test, config.batch_size)
        }
    }
    .map_err(train_failure)?;
    let show_accuracy = config.metrics.contains(&MetricName::Accuracy);
    out.line(format!(
        "Test on {} images: {}",
        grouped(evaluation.examples),
        metrics_line("test_", &evaluation, show_accuracy)
    ))?;
    out.json(json!({
        "mode": "evaluate",
        "test_loss": evaluation.loss,
        "test_accuracy": evaluation.accuracy,
        "examples": evaluation.examples,
        "checkpoint": checkpoint_path.display().to_string(),
        "wall_seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Whether `path` is to be read as a PNG: it is named `.png` (a file so
/// named without the PNG signature is then reported as "not a PNG file"),
/// or it starts with the PNG signature whatever its name.
fn is_png(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return true;
    }
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == data::image::PNG_SIGNATURE)
}

/// Whether `path` is to be read as a JPEG: named `.jpg` / `.jpeg`, or
/// starting with the JPEG start-of-image marker.
fn is_jpeg(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
    {
        return true;
    }
    let mut head = [0u8; 3];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == [0xFF, 0xD8, 0xFF])
}

/// The `top` most probable classes of `row`, most probable first (ties:
/// lower class index first).
fn top_classes(row: &[f32], top: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.truncate(top);
    order
}

fn predict(
    run_file: &LoadedRunFile,
    mut compiled: Compiled,
    out: &Out,
    started: Instant,
) -> Result<(), Failure> {
    let config = &run_file.config;
    let (checkpoint_key, checkpoint_path) = match &config.predict.checkpoint {
        Some(path) => ("predict.checkpoint", Some(path)),
        None => ("checkpoint", config.checkpoint.as_ref()),
    };
    let (checkpoint_path, params) =
        load_checkpoint(run_file, checkpoint_key, checkpoint_path, &compiled)?;
    let count = config.predict.count;
    if count == 0 {
        return Err(run_file.invalid_at(
            "predict.count",
            "predict.count is 0, so there is nothing to classify; set it to 1 or more",
        ));
    }

    // Gather inputs: (name, image [h, w, c], true label if known).
    let mut names = Vec::new();
    let mut images: Vec<Tensor> = Vec::new();
    let mut labels: Vec<Option<usize>> = Vec::new();
    if config.predict.top == 0 {
        return Err(run_file.invalid_at(
            "predict.top",
            "predict.top is 0; set how many of the most probable classes to show (1 or more)",
        ));
    }
    if config.predict.inputs.is_empty() && config.data.format == config::DataFormat::Folder {
        let test = folder_test_split(run_file, &mut compiled)?;
        let first: Vec<usize> = (0..test.len().min(count)).collect();
        let batch = test
            .batch(&first, 0)
            .map_err(|e| folder::folder_failure(run_file, e))?;
        for (k, image) in batch.images.outer_iter().enumerate() {
            names.push(test.list().paths[k].display().to_string());
            images.push(image.to_owned());
            labels.push(Some(batch.labels[k]));
        }
    } else if config.predict.inputs.is_empty() {
        let Some(test) = load_pair(run_file, &compiled, "test", Some(count))? else {
            return Err(run_file.invalid(
                "mode `predict` needs `predict.inputs` (PNG or IDX files) or `data.test_images`",
            ));
        };
        let file = config
            .data
            .test_images
            .as_ref()
            .map(|p| {
                run_file
                    .resolve("data.test_images", p)
                    .display()
                    .to_string()
            })
            .unwrap_or_default();
        for (i, image) in test.images.outer_iter().enumerate() {
            names.push(format!("{file}[{i}]"));
            images.push(image.to_owned());
            labels.push(Some(test.labels[i]));
        }
    } else {
        let [height, width, channels] = compiled.input_shape[..] else {
            return Err(run_file.invalid(format!(
                "the model input shape {:?} is not an image [height, width, channels]",
                compiled.input_shape
            )));
        };
        // Colour models, JPEG files and image-folder run files go through the
        // image pipeline of `data:` (resize, crop, preprocess); grey PNGs of
        // an IDX run file keep the Fashion-MNIST reading.
        let mut pipeline = None;
        for (i, input) in config.predict.inputs.iter().enumerate() {
            let key = format!("predict.inputs[{i}]");
            let path = run_file.resolve("predict.inputs", input);
            let png = is_png(&path);
            if is_jpeg(&path)
                || (png && (channels != 1 || config.data.format == config::DataFormat::Folder))
            {
                if pipeline.is_none() {
                    pipeline = Some(folder::pipeline(run_file, &compiled.input_shape)?);
                }
                let pipeline = pipeline.as_ref().expect("set above");
                let image = pipeline.load(&path).map_err(|err| {
                    let message = format!("{err} (`{key}` in {})", run_file.path.display());
                    match err {
                        cnnc_runtime::data::folder::FolderError::Io { .. } => {
                            Failure::usage(message)
                        }
                        _ => Failure::invalid(message),
                    }
                })?;
                let tensor = Tensor::from_shape_vec(
                    vec![image.height, image.width, image.channels],
                    image.data,
                )
                .map_err(|err| Failure::invalid(format!("`{}`: {err}", path.display())))?;
                names.push(path.display().to_string());
                images.push(tensor);
                labels.push(None);
            } else if png {
                if channels != 1 {
                    return Err(run_file.invalid(format!(
                        "`{}`: PNG inputs are read as grey images, but the model expects {channels} channels",
                        path.display()
                    )));
                }
                let image = data::image::read_png(&path, height, width)
                    .map_err(|err| data_failure(run_file, &key, err))?;
                names.push(path.display().to_string());
                images.push(image);
                labels.push(None);
            } else {
                let all = data::idx::read_images(&path)
                    .map_err(|err| data_failure(run_file, &key, err))?;
                if &all.shape()[1..] != compiled.input_shape.as_slice() {
                    return Err(run_file.invalid(format!(
                        "`{}` holds images of shape {:?} but the model expects {:?}",
                        path.display(),
                        &all.shape()[1..],
                        compiled.input_shape
                    )));
                }
                for (k, image) in all.outer_iter().take(count).enumerate() {
                    names.push(format!("{}[{k}]", path.display()));
                    images.push(image.to_owned());
                    labels.push(None);
                }
            }
        }
    }
    let mut shape = vec![images.len()];
    shape.extend_from_slice(&compiled.input_shape);
    let flat: Vec<f32> = images.iter().flat_map(|t| t.iter().copied()).collect();
    let batch = Tensor::from_shape_vec(shape, flat)
        .map_err(|err| Failure::invalid(format!("inputs do not form a batch: {err}")))?;

    // Named files with a folder data set: the class names are its folder
    // names, as in training (unless the run file gives names).
    let data = &config.data;
    if data.format == config::DataFormat::Folder
        && data.class_names.is_none()
        && data.class_names_file.is_none()
        && !config.predict.inputs.is_empty()
    {
        if let Some(directory) = &data.directory {
            let directory = run_file.resolve("data.directory", directory);
            let list = cnnc_runtime::data::folder::ImageList::from_directory(&directory)
                .map_err(|e| folder::folder_failure(run_file, e))?;
            if list.class_names.len() == compiled.classes {
                compiled.class_names = list.class_names;
            }
        }
    }
    let mut classifier = Classifier::new(compiled.inference).map_err(train_failure)?;
    let probabilities = classifier
        .predict(&params, &batch, config.batch_size)
        .map_err(train_failure)?;
    let mut predictions = Vec::new();
    let top = config.predict.top.min(compiled.classes);
    for (i, row) in probabilities.outer_iter().enumerate() {
        let row: Vec<f32> = row.iter().copied().collect();
        let best = top_classes(&row, top);
        let class = best[0];
        let probability = row[class];
        let class_name = &compiled.class_names[class];
        // One line per input, or with `top` > 1 the input then one line per
        // class: `  1. minibus (45.5%)`.
        let mut line = if top == 1 {
            format!("{}: {class_name} ({:.1}%)", names[i], probability * 100.0)
        } else {
            format!("{}:", names[i])
        };
        if let Some(label) = labels[i] {
            let mark = if label == class { "correct" } else { "wrong" };
            line += &format!("  [label: {}, {mark}]", compiled.class_names[label]);
        }
        for (rank, &c) in best.iter().enumerate().skip(usize::from(top == 1)) {
            line += &format!(
                "\n  {}. {} ({:.1}%)",
                rank + 1,
                compiled.class_names[c],
                row[c] * 100.0
            );
        }
        out.line(line)?;
        let top_json: Vec<serde_json::Value> = best
            .iter()
            .map(|&c| {
                json!({"class": c, "class_name": compiled.class_names[c], "probability": row[c]})
            })
            .collect();
        predictions.push(json!({
            "top": top_json,
            "input": names[i],
            "class": class,
            "class_name": class_name,
            "probability": probability,
            "probabilities": row,
            "label": labels[i],
        }));
    }
    out.json(json!({
        "mode": "predict",
        "checkpoint": checkpoint_path.display().to_string(),
        "class_names": compiled.class_names,
        "predictions": predictions,
        "wall_seconds": started.elapsed().as_secs_f64(),
    }))
}

/// The sizes of a checked shape (known once `try_lower` succeeded).
fn graph_sizes(dims: &[cnnc_compiler::model::Dim]) -> Vec<usize> {
    dims.iter().map(|d| d.known().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_classes_are_sorted_by_probability_then_index() {
        let row = [0.1, 0.4, 0.05, 0.4, 0.05];
        assert_eq!(top_classes(&row, 3), [1, 3, 0]);
        assert_eq!(top_classes(&row, 1), [1]);
        assert_eq!(top_classes(&row, 9), [1, 3, 0, 2, 4]);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_413_834), "1,413,834");
    }
}
