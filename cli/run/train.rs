//! Mode `train`: load the data (IDX in memory, or a streamed image folder),
//! start from initial or pretrained (`weights`) parameters, run the
//! training phases, save checkpoint and history, evaluate on the test set.

use super::config::{DataFormat, LoadedRunFile, MetricName};
use super::progress::{KerasProgress, Sink};
use super::{
    check_not_empty, check_outputs, checkpoint_failure, folder, grouped, load_pair, metrics_line,
    phases, plural, train_failure, Compiled, Failure, Format, Out,
};
use cnnc_runtime::checkpoint;
use cnnc_runtime::data::folder::BatchSource;
use cnnc_runtime::data::mix_seed;
use cnnc_runtime::optim::Optimizer;
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::train::{Classifier, Evaluation, FitConfig, History, Trainer};
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

pub(super) fn train(
    run_file: &LoadedRunFile,
    compiled: Compiled,
    out: &Out,
    format: Format,
    started: Instant,
) -> Result<(), Failure> {
    let config = &run_file.config;
    let phases = phases::plan(run_file, &compiled.model)?;
    check_outputs(run_file)?;
    // Initial parameters and pretrained weights before any data is read,
    // so that a wrong weights file is reported at once.
    let (training, inference) = phases::graphs(&compiled.model, &phases[0].trainable)?;
    let mut params = ParamStore::init(&training, config.seed);
    let loaded = load_weights(run_file, &training, &mut params)?;
    let start = Start {
        training,
        inference,
        params,
        loaded,
    };
    match config.data.format {
        DataFormat::Idx => {
            let Some(full) = load_pair(run_file, &compiled, "train", config.data.train_limit)?
            else {
                return Err(run_file
                    .invalid("mode `train` needs `data.train_images` and `data.train_labels`"));
            };
            check_not_empty(run_file, "train", config.data.train_limit, &full)?;
            let test = load_pair(run_file, &compiled, "test", config.data.test_limit)?;
            if let Some(test) = &test {
                check_not_empty(run_file, "test", config.data.test_limit, test)?;
            }
            let split = config.data.validation_split.unwrap_or_default().0;
            let (train_set, validation) = full.split_validation(split).map_err(|err| {
                run_file.invalid_at(
                    "data.validation_split",
                    format!("data.validation_split: {err}"),
                )
            })?;
            let data = Data {
                train: &train_set,
                validation: &validation,
                test: test.as_ref(),
            };
            train_on(
                run_file, &compiled, &phases, start, data, out, format, started,
            )
        }
        DataFormat::Folder => {
            let pipeline = folder::pipeline(run_file, &compiled.input_shape)?;
            let threads = rayon::current_num_threads();
            let loading = Instant::now();
            let mut parts = folder::load(run_file, pipeline, compiled.classes, threads)?;
            if config.data.cache.unwrap_or(true) {
                for part in [&mut parts.train, &mut parts.validation, &mut parts.test] {
                    part.cache_decoded()
                        .map_err(|e| folder::folder_failure(run_file, e))?;
                }
            }
            out.line(format!(
                "Found {} images of {} in `{}` ({}); split per class: {} train, {} validation, \
                 {} test{}",
                grouped(parts.train.len() + parts.validation.len() + parts.test.len()),
                plural(parts.class_names.len(), "class"),
                config
                    .data
                    .directory
                    .as_ref()
                    .map(|d| run_file.resolve("data.directory", d).display().to_string())
                    .unwrap_or_default(),
                parts.class_names.join(", "),
                grouped(parts.train.len()),
                grouped(parts.validation.len()),
                grouped(parts.test.len()),
                if parts.train.is_cached() {
                    format!(", decoded in {:.1}s", loading.elapsed().as_secs_f64())
                } else {
                    String::new()
                }
            ))?;
            // Per-class counts round down: a small folder can leave a
            // requested part empty.
            for (part, fraction, len) in [
                ("validation", parts.split.validation, parts.validation.len()),
                ("test", parts.split.test, parts.test.len()),
            ] {
                if fraction > 0.0 && len == 0 {
                    out.line(format!(
                        "warning: the {part} part is empty: {fraction} of each class rounds \
                         down to 0 images; add images or raise the fraction"
                    ))?;
                }
            }
            if parts.train.is_empty() {
                return Err(run_file.invalid_at(
                    "data.directory",
                    "the split leaves no training images: lower data.test_split and \
                     data.validation_split, or add images",
                ));
            }
            let mut compiled = compiled;
            if run_file.config.data.class_names.is_none()
                && run_file.config.data.class_names_file.is_none()
            {
                compiled.class_names = parts.class_names.clone();
            }
            let data = Data {
                train: &parts.train,
                validation: &parts.validation,
                test: (!parts.test.is_empty()).then_some(&parts.test),
            };
            train_on(
                run_file, &compiled, &phases, start, data, out, format, started,
            )
        }
    }
}

/// The first phase's graphs and the parameters training starts from, with
/// the line saying what `weights` loaded (if it is set).
struct Start {
    training: cnnc_compiler::graph::Graph,
    inference: cnnc_compiler::graph::Graph,
    params: ParamStore,
    loaded: Option<String>,
}

/// The three parts of the data, whatever their kind.
struct Data<'a, T, V, E> {
    train: &'a T,
    validation: &'a V,
    test: Option<&'a E>,
}

/// Pretrained `weights` by name into `params` (aligned with the training
/// graph's parameters): a cnnc checkpoint (safetensors) or a Keras `.h5`
/// file (full model, `save_weights`, `keras.applications` or Keras 3
/// `.weights.h5`); reports what was loaded.
fn load_weights(
    run_file: &LoadedRunFile,
    graph: &cnnc_compiler::graph::Graph,
    params: &mut ParamStore,
) -> Result<Option<String>, Failure> {
    let Some(weights) = &run_file.config.weights else {
        return Ok(None);
    };
    let path = run_file.resolve("weights", weights);
    let h5_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
    let report = if cnnc_import::keras::is_hdf5_file(&path) || (h5_name && path.is_file()) {
        load_keras_by_name(&path, graph, params)
            .map_err(|err| run_file.invalid_at("weights", format!("weights: {err}")))?
    } else {
        checkpoint::load_by_name(&path, &graph.params, params)
            .map_err(|err| weights_failure(run_file, &path, err))?
    };
    let mut line = format!(
        "Loaded {} of the model's {} parameter tensors from {}",
        report.loaded.len(),
        graph.params.len(),
        path.display()
    );
    if !report.not_in_file.is_empty() {
        line += &format!(
            "; not in the file, initialized: {}",
            report.not_in_file.join(", ")
        );
    }
    if !report.unused.is_empty() {
        line += &format!("; unused from the file: {}", report.unused.join(", "));
    }
    Ok(Some(line))
}

/// A `weights:` file that cannot be used, named as `weights` (not as the
/// checkpoint); a file with no tensor of the model gets a short summary.
fn weights_failure(
    run_file: &LoadedRunFile,
    path: &Path,
    err: checkpoint::CheckpointError,
) -> Failure {
    use checkpoint::CheckpointError;
    let shown = path.display();
    match err {
        CheckpointError::Io { .. } => checkpoint_failure(err),
        CheckpointError::Mismatch {
            missing,
            unexpected,
            mismatched,
            ..
        } if mismatched.is_empty() => {
            let some = |names: &[String]| {
                let mut s = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
                if names.len() > 4 {
                    s += &format!(", ... ({} in all)", names.len());
                }
                s
            };
            run_file.invalid_at(
                "weights",
                format!(
                    "weights: none of the {} tensors of `{shown}` ({}) is a parameter of the \
                     model ({}); was it written for another model?",
                    unexpected.len(),
                    some(&unexpected),
                    some(&missing)
                ),
            )
        }
        other => run_file.invalid_at("weights", format!("weights: {other}")),
    }
}

/// Keras's `load_weights(by_name=True)` from an HDF5 file: the layers the
/// file lacks keep their values (a new head), any other difference (weight
/// counts, shapes) is an error listing them all.
fn load_keras_by_name(
    path: &Path,
    graph: &cnnc_compiler::graph::Graph,
    params: &mut ParamStore,
) -> Result<checkpoint::ByName, cnnc_import::keras::KerasError> {
    use cnnc_import::keras::{load_keras_weights, KerasError};
    let layer_of = |name: &str| name.rsplit_once('/').map_or(name, |(l, _)| l).to_string();
    let mut wanted: Vec<cnnc_compiler::graph::Param> = graph.params.clone();
    let mut not_in_file = Vec::new();
    let loaded = match load_keras_weights(path, &wanted) {
        Err(KerasError::WeightsMismatch(m))
            if m.counts.is_empty()
                && m.shapes.is_empty()
                && wanted
                    .iter()
                    .any(|p| !m.missing_layers.contains(&layer_of(&p.name))) =>
        {
            let (keep, skip): (Vec<_>, Vec<_>) = wanted
                .into_iter()
                .partition(|p| !m.missing_layers.contains(&layer_of(&p.name)));
            not_in_file = skip.into_iter().map(|p| p.name).collect();
            wanted = keep;
            load_keras_weights(path, &wanted)?
        }
        other => other?,
    };
    let mut report = checkpoint::ByName {
        not_in_file,
        unused: loaded.unused_layers,
        ..Default::default()
    };
    for tensor in loaded.tensors {
        let Some(i) = graph.params.iter().position(|p| p.name == tensor.name) else {
            continue;
        };
        if let Some(target) = params.values[i].as_slice_mut() {
            if target.len() == tensor.values.len() {
                target.copy_from_slice(&tensor.values);
                report.loaded.push(tensor.name);
            }
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn train_on<T: BatchSource, V: BatchSource, E: BatchSource>(
    run_file: &LoadedRunFile,
    compiled: &Compiled,
    phases: &[phases::Phase],
    start: Start,
    data: Data<'_, T, V, E>,
    out: &Out,
    format: Format,
    started: Instant,
) -> Result<(), Failure> {
    let config = &run_file.config;
    let Start {
        training: first_training,
        inference: first_inference,
        mut params,
        loaded,
    } = start;
    if let Some(line) = loaded {
        out.line(line)?;
    }
    let parameter_count = first_training.param_count();
    let validation = (!data.validation.is_empty()).then_some(data.validation);
    let phased = config.phases.is_some();
    out.line(format!(
        "Training `{}` ({} parameters) on {} images, validating on {}; {}{}, batch_size {}, seed {}",
        compiled.name,
        grouped(parameter_count),
        grouped(data.train.len()),
        grouped(data.validation.len()),
        if phased {
            String::new()
        } else {
            format!("{}, ", phases[0].optimizer.describe())
        },
        config.loss.name(),
        config.batch_size,
        config.seed
    ))?;
    let sink = match format {
        Format::Text => Sink::Stdout,
        Format::Json => Sink::Stderr,
    };
    let interactive = match sink {
        Sink::Stdout => std::io::stdout().is_terminal(),
        Sink::Stderr => std::io::stderr().is_terminal(),
    };
    let show_accuracy = config.metrics.contains(&MetricName::Accuracy);
    let mut progress = KerasProgress::new(sink, interactive, show_accuracy);
    let checkpoint_path = config
        .checkpoint
        .as_ref()
        .map(|p| run_file.resolve("checkpoint", p));
    let history_path = config
        .history
        .as_ref()
        .map(|p| run_file.resolve("history", p));

    let mut history = History::default();
    let mut phase_reports = Vec::new();
    let mut first = Some((first_training, first_inference));
    let mut last_inference = None;
    let mut done_epochs = 0;
    for (k, phase) in phases.iter().enumerate() {
        let (training, inference) = match first.take() {
            Some(graphs) => graphs,
            None => phases::graphs(&compiled.model, &phase.trainable)?,
        };
        last_inference = Some(inference.clone());
        let mut current = Trainer::new(training, inference, params).map_err(train_failure)?;
        let mut optimizer = Optimizer::new(phase.optimizer, &current.graph().params)
            .map_err(|err| run_file.invalid_at("optimizer", format!("optimizer: {err}")))?;
        let trainable = phase.trainable_params(&compiled.model);
        if phased {
            out.line(format!(
                "Phase {}/{} `{}`: {} epoch{}, {}, {} of {} parameters trainable",
                k + 1,
                phases.len(),
                phase.name,
                phase.epochs,
                if phase.epochs == 1 { "" } else { "s" },
                phase.optimizer.describe(),
                grouped(trainable),
                grouped(parameter_count),
            ))?;
        }
        let phase_started = Instant::now();
        let fit = FitConfig {
            initial_epoch: done_epochs,
            epochs: done_epochs + phase.epochs,
            batch_size: config.batch_size,
            validation_batch_size: None,
            // Phase 1 keeps the run's seed (a run without phases is phase 1).
            seed: if k == 0 {
                config.seed
            } else {
                mix_seed(config.seed, k as u64)
            },
            shuffle: true,
        };
        let phase_history = current
            .fit_source(&mut optimizer, data.train, validation, &fit, &mut progress)
            .map_err(train_failure)?;
        done_epochs += phase.epochs;
        let last = phase_history.epochs.last().copied();
        history.epochs.extend(phase_history.epochs);
        // Save after every phase, so that a later phase going wrong never
        // loses the earlier ones' weights (atomic: temporary file, rename).
        if let Some(path) = &checkpoint_path {
            checkpoint::save(path, &current.graph().params, current.params())
                .map_err(checkpoint_failure)?;
            if phased && k + 1 < phases.len() {
                out.line(format!(
                    "Saved checkpoint after phase {} to {}",
                    k + 1,
                    path.display()
                ))?;
            }
        }
        phase_reports.push(json!({
            "name": phase.name,
            "epochs": phase.epochs,
            "optimizer": phase.optimizer,
            "trainable_params": trainable,
            "seconds": phase_started.elapsed().as_secs_f64(),
            "loss": last.map(|e| e.loss),
            "accuracy": last.map(|e| e.accuracy),
            "val_loss": last.and_then(|e| e.val_loss),
            "val_accuracy": last.and_then(|e| e.val_accuracy),
        }));
        params = current.into_params();
    }

    if let Some(path) = &history_path {
        history.save(path).map_err(|err| {
            Failure::invalid(format!("cannot write history `{}`: {err}", path.display()))
        })?;
    }
    if let Some(path) = &checkpoint_path {
        out.line(format!("Saved checkpoint to {}", path.display()))?;
    }
    if let Some(path) = &history_path {
        out.line(format!("Saved history to {}", path.display()))?;
    }

    let test_metrics = match (data.test, last_inference) {
        (Some(test), Some(inference)) => {
            let mut classifier = Classifier::new(inference).map_err(train_failure)?;
            let evaluation = classifier
                .evaluate_source(&params, test, config.batch_size)
                .map_err(train_failure)?;
            out.line(format!(
                "Test on {} images: {}",
                grouped(test.len()),
                metrics_line("test_", &evaluation, show_accuracy)
            ))?;
            Some(evaluation)
        }
        _ => None,
    };

    let wall_seconds = started.elapsed().as_secs_f64();
    out.line(format!("Done in {wall_seconds:.1}s"))?;
    let mut report = train_json(
        &history,
        test_metrics.as_ref(),
        checkpoint_path.as_deref(),
        history_path.as_deref(),
        wall_seconds,
        [
            data.train.len(),
            data.validation.len(),
            data.test.map_or(0, |t| t.len()),
        ],
    );
    if phased {
        report["phases"] = json!(phase_reports);
    }
    out.json(report)
}

fn train_json(
    history: &History,
    test: Option<&Evaluation>,
    checkpoint: Option<&Path>,
    history_file: Option<&Path>,
    wall_seconds: f64,
    [train, validation, test_examples]: [usize; 3],
) -> serde_json::Value {
    let last = history.epochs.last();
    json!({
        "mode": "train",
        "loss": last.map(|e| e.loss),
        "accuracy": last.map(|e| e.accuracy),
        "val_loss": last.and_then(|e| e.val_loss),
        "val_accuracy": last.and_then(|e| e.val_accuracy),
        "test_loss": test.map(|e| e.loss),
        "test_accuracy": test.map(|e| e.accuracy),
        "history": history.to_json(),
        "checkpoint": checkpoint.map(|p| p.display().to_string()),
        "history_file": history_file.map(|p| p.display().to_string()),
        "examples": { "train": train, "validation": validation, "test": test_examples },
        "wall_seconds": wall_seconds,
    })
}
