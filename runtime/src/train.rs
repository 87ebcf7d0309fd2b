//! The training loop (`fit`), `evaluate` and `predict`, with Keras's
//! semantics and a per-epoch [`History`].
//!
//! # Logits and probabilities
//!
//! Training runs the training graph in [`Mode::Train`], which skips a trailing
//! softmax: the loss is sparse categorical cross-entropy **from logits**
//! (stable log-softmax, see [`crate::loss`]), whose gradient
//! `(softmax - onehot) / batch` goes to [`Executor::backward`].
//!
//! Evaluation uses the inference graph (dropout removed) with its trailing
//! `Softmax` node cut off ([`Classifier::new`]), so validation and test losses
//! are computed from logits in the same stable way. (Keras instead computes
//! `-log(clip(p, 1e-7, 1 - 1e-7))` from the probabilities, which saturates at
//! 16.1 for confident mistakes; the two agree whenever `p[y] > 1e-7`.)
//! Accuracy is the same either way, since softmax keeps the arg-max.
//! [`Classifier::predict`] applies the softmax back, returning probabilities.
//! A model without a trailing softmax is treated as producing logits, in
//! training and evaluation alike.
//!
//! # Batch normalization
//!
//! Each training step runs batch norms on the batch's statistics and then
//! folds them into the moving mean and variance
//! ([`Executor::update_moving_statistics`]); evaluation and prediction use
//! the moving statistics. Frozen layers' parameters (and the moving
//! statistics) are never changed by the optimizer.
//!
//! # Inference parameters
//!
//! The inference graph may have batch norms folded into the kernels and
//! biases before them ([`cnnc_compiler::graph::ir::Init::Folded`]): values
//! computed from the model's parameters. [`Classifier::evaluate`] and
//! [`Classifier::predict`] given the model's [`ParamStore`] recompute them on
//! every call ([`InferenceParams::fold`], reusing their buffers), so they
//! always reflect the current parameters: [`Trainer::evaluate`] and the
//! validation in [`Trainer::fit`] after training steps never see stale
//! values. For repeated inference on fixed parameters, prepare them once
//! with [`InferenceParams::prepare`] and pass those instead.
//!
//! # Determinism
//!
//! The shuffle (per epoch) and the dropout masks (per step) come from
//! ChaCha8 generators seeded from [`FitConfig::seed`] via [`mix_seed`], and the
//! optimizer updates each parameter sequentially, so a run is reproducible
//! for a given seed and thread count.

use crate::data::folder::{BatchSource, FolderError};
use crate::data::{batch_count, epoch_order, mix_seed, Batch, Dataset};
use crate::executor::{ExecError, Executor, Mode};
use crate::loss::{self, LossError};
use crate::metrics::{correct_count, RunningMean};
use crate::optim::{OptimError, Optimizer};
use crate::params::{
    model_params, InferenceParams, ParamError, ParamSource, ParamStore, ParamsRef,
};
use crate::tensor::Tensor;
use cnnc_compiler::graph::{Graph, Op};
use ndarray::{Axis, IxDyn};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// An error during training, evaluation or prediction.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data's example shape differs from the model's input shape.
    #[error("the model expects inputs of shape {expected:?} but the data has {found:?}")]
    InputShape {
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The model's output is not a vector of class scores.
    #[error("the model output has shape {shape:?}; a classifier needs [classes]")]
    NotAClassifier { shape: Vec<usize> },
    /// There is nothing to train on / evaluate.
    #[error("the {0} set is empty")]
    EmptyData(&'static str),
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    /// The training and inference graphs do not have the same parameters.
    #[error("the training and inference graphs have different parameters ({0})")]
    GraphMismatch(String),
    /// The loss became NaN or infinite: training has diverged.
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step}: training diverged \
         (try a lower learning_rate) or the data holds NaN values"
    )]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        loss: f32,
    },
    /// The executor rejected the graph, the parameters or an input.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The model's parameters do not fit the inference graph's folds.
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error(transparent)]
    Optimizer(#[from] OptimError),
    /// An example of a streaming data set (an image folder) could not be
    /// read or transformed.
    #[error(transparent)]
    Data(#[from] FolderError),
}

/// How to run `fit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// The epoch to stop after (Keras's `epochs`): epochs
    /// `initial_epoch + 1 ..= epochs` run.
    pub epochs: usize,
    /// Epochs already done (Keras's `initial_epoch`): a later `fit` call,
    /// such as the second phase of transfer learning, continues the epoch
    /// numbering, the per-epoch shuffles and augmentation and the dropout
    /// seeds instead of repeating those of epoch 1.
    pub initial_epoch: usize,
    /// Examples per training step (Keras default 32).
    pub batch_size: usize,
    /// Examples per evaluation step on the validation set (defaults to
    /// `batch_size`, as Keras's `validation_batch_size`).
    pub validation_batch_size: Option<usize>,
    /// Seed of the shuffles and dropout masks.
    pub seed: u64,
    /// Shuffle the training set each epoch (Keras default true).
    pub shuffle: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 1,
            initial_epoch: 0,
            batch_size: 32,
            validation_batch_size: None,
            seed: 42,
            shuffle: true,
        }
    }
}

/// Progress after one training step, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchProgress {
    /// 1-based epoch number.
    pub epoch: usize,
    pub epochs: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    /// Steps per epoch (`ceil(n / batch_size)`).
    pub steps: usize,
    /// Mean loss over the examples seen so far this epoch (Keras's display).
    pub loss: f64,
    /// Mean accuracy over the examples seen so far this epoch.
    pub accuracy: f64,
    /// Wall time since the epoch began.
    pub elapsed: Duration,
}

/// Metrics at the end of one epoch (Keras `logs`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLogs {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch (dropout active, as Keras reports it).
    pub loss: f64,
    pub accuracy: f64,
    /// Loss on the validation set after the epoch (`None` without validation).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// Hooks called by [`Trainer::fit`] (Keras callbacks). All methods do
/// nothing by default; `()` is the no-op callback.
pub trait FitCallback {
    /// Before the first step of `epoch` (1-based).
    fn on_epoch_begin(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    /// After each training step.
    fn on_batch_end(&mut self, _progress: &BatchProgress) {}
    /// After the training steps of an epoch, before validation.
    fn on_validation_begin(&mut self) {}
    /// After validation, with the epoch's metrics.
    fn on_epoch_end(&mut self, _logs: &EpochLogs) {}
}

impl FitCallback for () {}

/// Per-epoch metrics of a `fit` (Keras's `History`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochLogs>,
}

impl History {
    /// Keras's `history.history` layout, a list per metric:
    /// `{"epoch": [1, 2], "loss": [..], "accuracy": [..], "val_loss": [..],
    /// "val_accuracy": [..], "seconds": [..]}`; the `val_` lists are left out
    /// when there was no validation.
    pub fn to_json(&self) -> serde_json::Value {
        let column = |f: &dyn Fn(&EpochLogs) -> serde_json::Value| -> serde_json::Value {
            self.epochs.iter().map(f).collect::<Vec<_>>().into()
        };
        let mut map = serde_json::Map::new();
        map.insert("epoch".into(), column(&|e| e.epoch.into()));
        map.insert("loss".into(), column(&|e| e.loss.into()));
        map.insert("accuracy".into(), column(&|e| e.accuracy.into()));
        if self.epochs.iter().any(|e| e.val_loss.is_some()) {
            map.insert("val_loss".into(), column(&|e| e.val_loss.into()));
            map.insert("val_accuracy".into(), column(&|e| e.val_accuracy.into()));
        }
        map.insert("seconds".into(), column(&|e| e.seconds.into()));
        map.into()
    }

    /// One row per epoch, as Keras's `CSVLogger`:
    /// `epoch,loss,accuracy,val_loss,val_accuracy,seconds` (empty `val_`
    /// cells without validation).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n");
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for e in &self.epochs {
            out += &format!(
                "{},{},{},{},{},{:.3}\n",
                e.epoch,
                e.loss,
                e.accuracy,
                opt(e.val_loss),
                opt(e.val_accuracy),
                e.seconds
            );
        }
        out
    }

    /// Writes the history as CSV if `path` ends in `.csv`, JSON otherwise,
    /// through a temporary file renamed into place. Creates the parent folder.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            self.to_csv()
        } else {
            let mut json =
                serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
            json.push('\n');
            json
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = crate::checkpoint::temporary_path(path);
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
    }
}

/// Loss and accuracy of a model on a data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean sparse categorical cross-entropy.
    pub loss: f64,
    /// Fraction of examples whose arg-max is the label.
    pub accuracy: f64,
    /// Number of examples evaluated.
    pub examples: usize,
}

/// What the evaluation graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Logits; `softmax_removed` says the original graph ended in softmax.
    /// [`Classifier::predict`] applies the softmax either way.
    Logits { softmax_removed: bool },
    /// Probabilities from a softmax that could not be cut off.
    Probabilities,
}

/// Runs an inference graph for evaluation and prediction (see the module
/// docs for how logits are obtained), on the inference memory plan
/// ([`Executor::for_inference`]).
pub struct Classifier {
    executor: Executor,
    output: Output,
    input_shape: Vec<usize>,
    classes: usize,
    /// The folded values of the last call given the model's parameters.
    folded: Option<InferenceParams>,
}

/// The parameters to run `graph` on: prepared ones as given; the model's
/// store as is for a graph without folds, else under its folded values,
/// recomputed now into `folded`.
fn inference_params<'a>(
    graph: &Graph,
    folded: &'a mut Option<InferenceParams>,
    params: ParamsRef<'a>,
) -> Result<ParamsRef<'a>, TrainError> {
    let ParamsRef::Store(model) = params else {
        return Ok(params);
    };
    if crate::params::model_param_count(graph) == graph.params.len() {
        return Ok(params);
    }
    match folded {
        Some(f) => f.refold(graph, model)?,
        None => *folded = Some(InferenceParams::fold(graph, model)?),
    }
    let f: &'a InferenceParams = folded.as_ref().expect("set above");
    Ok(f.over(model))
}

impl Classifier {
    /// Prepares an inference graph (dropout already eliminated by the passes):
    /// a trailing `Softmax` that is the last node is cut off so the graph
    /// yields logits.
    pub fn new(mut graph: Graph) -> Result<Classifier, TrainError> {
        if graph.output.0 >= graph.nodes.len() || graph.input.0 >= graph.nodes.len() {
            return Err(TrainError::NotAClassifier { shape: vec![] });
        }
        let output = graph.output;
        let is_softmax = matches!(graph.node(output).op, Op::Softmax);
        let is_last = output.0 + 1 == graph.nodes.len();
        let single_input = graph.node(output).inputs.len() == 1;
        let single_output = graph.output_ids().len() == 1;
        let output_kind =
            if is_softmax && is_last && single_input && single_output && output != graph.input {
                graph.output = graph.node(output).inputs[0];
                graph.outputs = vec![graph.output];
                graph.nodes.pop();
                Output::Logits {
                    softmax_removed: true,
                }
            } else if is_softmax {
                Output::Probabilities
            } else {
                Output::Logits {
                    softmax_removed: false,
                }
            };
        let shape = graph.node(graph.output).shape.clone();
        let [classes] = shape[..] else {
            return Err(TrainError::NotAClassifier { shape });
        };
        let input_shape = graph.node(graph.input).shape.clone();
        let executor = Executor::for_inference(graph);
        executor.validate()?;
        Ok(Classifier {
            executor,
            output: output_kind,
            input_shape,
            classes,
            folded: None,
        })
    }

    /// Number of classes (the output width).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Per-example input shape (`[height, width, channels]`).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The graph the classifier runs (the inference graph minus its softmax).
    pub fn graph(&self) -> &Graph {
        self.executor.graph()
    }

    fn check_input(&self, found: &[usize]) -> Result<(), TrainError> {
        check_input(&self.input_shape, found)
    }

    /// Loss and accuracy on `data`, in batches of `batch_size` (results do not
    /// depend on the batch size up to float rounding). `params`: the model's
    /// [`ParamStore`] (folded values are recomputed from it, see the module
    /// docs) or prepared [`InferenceParams`].
    pub fn evaluate<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        data: &Dataset,
        batch_size: usize,
    ) -> Result<Evaluation, TrainError> {
        self.evaluate_source(params, data, batch_size)
    }

    /// [`Classifier::evaluate`] on any [`BatchSource`], e.g. a streaming
    /// image folder (read as in epoch 0: give it no augmentation).
    pub fn evaluate_source<P: ParamSource + ?Sized, S: BatchSource>(
        &mut self,
        params: &P,
        data: &S,
        batch_size: usize,
    ) -> Result<Evaluation, TrainError> {
        if batch_size == 0 {
            return Err(TrainError::ZeroBatchSize);
        }
        if data.is_empty() {
            return Err(TrainError::EmptyData("evaluation"));
        }
        self.check_input(&data.example_shape())?;
        let params = inference_params(self.executor.graph(), &mut self.folded, params.param_ref())?;
        let order: Vec<usize> = (0..data.len()).collect();
        let mut loss_total = 0.0f64;
        let mut correct = 0usize;
        data.for_each_batch(&order, batch_size, 0, |_, batch: Batch| {
            let output = self
                .executor
                .try_forward(&params, &batch.images, Mode::Inference)?;
            loss_total += match self.output {
                Output::Logits { .. } => loss::crossentropy_per_example(&output, &batch.labels)?
                    .iter()
                    .map(|&l| f64::from(l))
                    .sum::<f64>(),
                Output::Probabilities => {
                    f64::from(loss::sparse_categorical_crossentropy_from_probabilities(
                        &output,
                        &batch.labels,
                    )?) * batch.len() as f64
                }
            };
            correct += correct_count(&output, &batch.labels);
            Ok::<(), TrainError>(())
        })?;
        Ok(Evaluation {
            loss: loss_total / data.len() as f64,
            accuracy: correct as f64 / data.len() as f64,
            examples: data.len(),
        })
    }

    /// Class probabilities `[n, classes]` for `images`
    /// (`[n, height, width, channels]`). The output of the last layer, before
    /// a final softmax, is treated as logits, as in training (like Keras's
    /// `from_logits=True`): a model without a trailing softmax gets one
    /// applied here, so the rows always sum to 1 and are consistent with
    /// the loss that [`Classifier::evaluate`] reports. `params` as for
    /// [`Classifier::evaluate`].
    pub fn predict<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        images: &Tensor,
        batch_size: usize,
    ) -> Result<Tensor, TrainError> {
        if batch_size == 0 {
            return Err(TrainError::ZeroBatchSize);
        }
        let n = images.shape().first().copied().unwrap_or(0);
        self.check_input(images.shape().get(1..).unwrap_or(&[]))?;
        let params = inference_params(self.executor.graph(), &mut self.folded, params.param_ref())?;
        let mut out = Tensor::zeros(IxDyn(&[n, self.classes]));
        for start in (0..n).step_by(batch_size) {
            let end = (start + batch_size).min(n);
            let batch = images.slice_axis(Axis(0), (start..end).into()).to_owned();
            let mut output = self
                .executor
                .try_forward(&params, &batch, Mode::Inference)?;
            if let Output::Logits { .. } = self.output {
                output = loss::softmax(&output)?;
            }
            if output.shape() != [end - start, self.classes] {
                return Err(TrainError::NotAClassifier {
                    shape: output.shape().to_vec(),
                });
            }
            out.slice_axis_mut(Axis(0), (start..end).into())
                .assign(&output);
        }
        Ok(out)
    }
}

fn check_input(expected: &[usize], found: &[usize]) -> Result<(), TrainError> {
    if expected != found {
        return Err(TrainError::InputShape {
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// A model being trained: the training graph's executor, a [`Classifier`]
/// on the inference graph for validation, and the parameter values.
pub struct Trainer {
    executor: Executor,
    classifier: Classifier,
    params: ParamStore,
}

/// The stream number of dropout seeds (distinct from the shuffle's epochs).
const DROPOUT_STREAM: u64 = 0x6472_6f70_6f75_7400; // "dropout\0"

impl Trainer {
    /// `training_graph` is optimized for `Target::Training`, `inference_graph`
    /// for `Target::Inference`, both from the same model, so they have the
    /// same model parameters (the inference graph may append folded ones,
    /// see [`crate::params`]); `params` holds the model's values (e.g. from
    /// `ParamStore::init` on the training graph or a checkpoint).
    pub fn new(
        training_graph: Graph,
        inference_graph: Graph,
        params: ParamStore,
    ) -> Result<Trainer, TrainError> {
        let model = model_params(&inference_graph);
        let same = training_graph.params.len() == model.len()
            && training_graph
                .params
                .iter()
                .zip(model)
                .all(|(a, b)| a.name == b.name && a.shape == b.shape);
        if !same {
            let names = |g: &Graph| {
                g.params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(TrainError::GraphMismatch(format!(
                "training: {}; inference: {}",
                names(&training_graph),
                names(&inference_graph)
            )));
        }
        if params.values.len() != training_graph.params.len() {
            return Err(TrainError::GraphMismatch(format!(
                "{} parameter values for {} parameters",
                params.values.len(),
                training_graph.params.len()
            )));
        }
        let classifier = Classifier::new(inference_graph)?;
        let executor = Executor::new(training_graph);
        executor.validate()?;
        Ok(Trainer {
            executor,
            classifier,
            params,
        })
    }

    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    pub fn into_params(self) -> ParamStore {
        self.params
    }

    /// The training graph.
    pub fn graph(&self) -> &Graph {
        self.executor.graph()
    }

    /// The classifier used for validation (and for `evaluate` / `predict`
    /// with the trained parameters).
    pub fn classifier(&mut self) -> (&mut Classifier, &ParamStore) {
        (&mut self.classifier, &self.params)
    }

    /// Loss and accuracy of the current parameters on `data` (folded
    /// inference values are recomputed from them first).
    pub fn evaluate(
        &mut self,
        data: &Dataset,
        batch_size: usize,
    ) -> Result<Evaluation, TrainError> {
        self.classifier.evaluate(&self.params, data, batch_size)
    }

    /// [`Trainer::evaluate`] on any [`BatchSource`] (e.g. a streaming image
    /// folder without augmentation).
    pub fn evaluate_source<S: BatchSource>(
        &mut self,
        data: &S,
        batch_size: usize,
    ) -> Result<Evaluation, TrainError> {
        self.classifier
            .evaluate_source(&self.params, data, batch_size)
    }

    /// Trains for `config.epochs` epochs (Keras `model.fit`): each epoch
    /// shuffles the training set, and for every batch runs forward
    /// ([`Mode::Train`]: logits, dropout on), the loss, backward, and one
    /// optimizer step; then evaluates on `validation` if given.
    pub fn fit(
        &mut self,
        optimizer: &mut Optimizer,
        train: &Dataset,
        validation: Option<&Dataset>,
        config: &FitConfig,
        callback: &mut dyn FitCallback,
    ) -> Result<History, TrainError> {
        self.fit_source(optimizer, train, validation, config, callback)
    }

    /// [`Trainer::fit`] on any [`BatchSource`]s, e.g. a streaming image
    /// folder ([`crate::data::folder::FolderSource`]) that decodes ahead of
    /// training and draws its augmentation from the (0-based) epoch it is
    /// given.
    pub fn fit_source<T: BatchSource, V: BatchSource>(
        &mut self,
        optimizer: &mut Optimizer,
        train: &T,
        validation: Option<&V>,
        config: &FitConfig,
        callback: &mut dyn FitCallback,
    ) -> Result<History, TrainError> {
        if config.batch_size == 0 || config.validation_batch_size == Some(0) {
            return Err(TrainError::ZeroBatchSize);
        }
        if train.is_empty() {
            return Err(TrainError::EmptyData("training"));
        }
        check_input(self.classifier.input_shape(), &train.example_shape())?;
        let validation = validation.filter(|v| !v.is_empty());
        if let Some(v) = validation {
            check_input(self.classifier.input_shape(), &v.example_shape())?;
        }
        let steps = batch_count(train.len(), config.batch_size);
        let mut history = History::default();
        let mut global_step = optimizer
            .iterations()
            .max((config.initial_epoch * steps) as u64);
        // Gradient and logit buffers reused from step to step.
        let mut grads: Vec<Tensor> = Vec::new();
        let mut logits = Tensor::zeros(IxDyn(&[0]));
        for epoch in config.initial_epoch + 1..=config.epochs {
            let started = Instant::now();
            callback.on_epoch_begin(epoch, config.epochs, steps);
            let order = epoch_order(train.len(), config.seed, epoch - 1, config.shuffle);
            let mut loss_mean = RunningMean::new();
            let mut accuracy_mean = RunningMean::new();
            let executor = &mut self.executor;
            let params = &mut self.params;
            let grads = &mut grads;
            let logits = &mut logits;
            train.for_each_batch(
                &order,
                config.batch_size,
                epoch - 1,
                |index, batch: Batch| {
                    let seed = mix_seed(config.seed ^ DROPOUT_STREAM, global_step);
                    global_step += 1;
                    executor.forward_into(&*params, &batch.images, Mode::Train { seed }, logits)?;
                    let logits = &*logits;
                    let out = loss::sparse_categorical_crossentropy(logits, &batch.labels)?;
                    if !out.loss.is_finite() {
                        return Err(TrainError::NonFiniteLoss {
                            epoch,
                            step: index + 1,
                            loss: out.loss,
                        });
                    }
                    let weight = batch.len() as f64;
                    loss_mean.add(f64::from(out.loss), weight);
                    accuracy_mean.add(correct_count(logits, &batch.labels) as f64 / weight, weight);
                    executor.backward_into(params, &out.grad_logits, grads)?;
                    optimizer.step(params, grads)?;
                    // Batch norm: fold this batch's statistics into the moving ones.
                    executor.update_moving_statistics(params)?;
                    callback.on_batch_end(&BatchProgress {
                        epoch,
                        epochs: config.epochs,
                        step: index + 1,
                        steps,
                        loss: loss_mean.mean(),
                        accuracy: accuracy_mean.mean(),
                        elapsed: started.elapsed(),
                    });
                    Ok(())
                },
            )?;
            let (val_loss, val_accuracy) = match validation {
                Some(v) => {
                    callback.on_validation_begin();
                    let batch_size = config.validation_batch_size.unwrap_or(config.batch_size);
                    let e = self
                        .classifier
                        .evaluate_source(&self.params, v, batch_size)?;
                    (Some(e.loss), Some(e.accuracy))
                }
                None => (None, None),
            };
            let logs = EpochLogs {
                epoch,
                loss: loss_mean.mean(),
                accuracy: accuracy_mean.mean(),
                val_loss,
                val_accuracy,
                seconds: started.elapsed().as_secs_f64(),
            };
            callback.on_epoch_end(&logs);
            history.epochs.push(logs);
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(epoch: usize, val: bool) -> EpochLogs {
        EpochLogs {
            epoch,
            loss: 0.5 / epoch as f64,
            accuracy: 0.75,
            val_loss: val.then_some(0.25),
            val_accuracy: val.then_some(0.875),
            seconds: 1.5,
        }
    }

    #[test]
    fn history_json_is_keras_shaped() {
        let history = History {
            epochs: vec![logs(1, true), logs(2, true)],
        };
        let json = history.to_json();
        assert_eq!(json["epoch"], serde_json::json!([1, 2]));
        assert_eq!(json["loss"], serde_json::json!([0.5, 0.25]));
        assert_eq!(json["val_accuracy"], serde_json::json!([0.875, 0.875]));
        let no_val = History {
            epochs: vec![logs(1, false)],
        };
        assert!(no_val.to_json().get("val_loss").is_none());
    }

    #[test]
    fn history_csv_has_one_row_per_epoch() {
        let history = History {
            epochs: vec![logs(1, true), logs(2, false)],
        };
        assert_eq!(
            history.to_csv(),
            "epoch,loss,accuracy,val_loss,val_accuracy,seconds\n\
             1,0.5,0.75,0.25,0.875,1.500\n\
             2,0.25,0.75,,,1.500\n"
        );
    }

    #[test]
    fn history_saves_by_extension() {
        let dir = std::env::temp_dir().join(format!("cnnc-history-{}", std::process::id()));
        let history = History {
            epochs: vec![logs(1, true)],
        };
        history.save(&dir.join("h.csv")).unwrap();
        history.save(&dir.join("sub/h.json")).unwrap();
        let csv = std::fs::read_to_string(dir.join("h.csv")).unwrap();
        assert!(csv.starts_with("epoch,loss"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("sub/h.json")).unwrap())
                .unwrap();
        assert_eq!(json["accuracy"], serde_json::json!([0.75]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
