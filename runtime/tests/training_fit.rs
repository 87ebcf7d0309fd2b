//! `Trainer::fit`, `Classifier::evaluate` / `predict` on small models compiled
//! from `.cnn` sources, with synthetic data whose answers are known.

use cnnc_compiler::graph::{lower, passes, Graph, Op};
use cnnc_runtime::data::Dataset;
use cnnc_runtime::optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use cnnc_runtime::train::{
    BatchProgress, Classifier, EpochLogs, FitCallback, FitConfig, TrainError, Trainer,
};
use ndarray::IxDyn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Training and inference graphs of a spec.
fn graphs(source: &str) -> (Graph, Graph) {
    let model = cnnc_compiler::check_source(source).expect("test spec is valid");
    let graph = lower::lower(&model);
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    (training, inference)
}

/// A 4 x 4 linear classifier over 4 classes.
const LINEAR: &str = "model linear { input [4, 4, 1] flatten dense(4, activation=softmax) }";

/// The same with a hidden layer and dropout (dropout must be active in
/// training and absent from evaluation).
const HIDDEN: &str = "model hidden {
  input [4, 4, 1]
  conv2d(4, 3, padding=same, activation=relu)
  flatten
  dense(16, activation=relu)
  dropout(0.25)
  dense(4, activation=softmax)
}";

/// `n` noisy 4 x 4 images; class k has its k-th 2 x 2 quadrant bright.
fn quadrants(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * 16);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.gen_range(0..4);
        let (qr, qc) = (class / 2, class % 2);
        for r in 0..4 {
            for c in 0..4 {
                let bright = r / 2 == qr && c / 2 == qc;
                let noise: f32 = rng.gen_range(0.0..0.3);
                pixels.push(if bright { 0.7 + noise } else { noise });
            }
        }
        labels.push(class);
    }
    let images = Tensor::from_shape_vec(IxDyn(&[n, 4, 4, 1]), pixels).unwrap();
    Dataset::new(images, labels).unwrap()
}

fn trainer(source: &str, seed: u64) -> Trainer {
    let (training, inference) = graphs(source);
    let params = ParamStore::init(&training, seed);
    Trainer::new(training, inference, params).unwrap()
}

fn sgd(learning_rate: f32) -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig {
        learning_rate,
        momentum: 0.9,
        ..SgdConfig::default()
    })
}

#[derive(Default)]
struct Recorder {
    epochs_begun: Vec<(usize, usize, usize)>,
    batches: Vec<BatchProgress>,
    validations: usize,
    ends: Vec<EpochLogs>,
}

impl FitCallback for Recorder {
    fn on_epoch_begin(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.epochs_begun.push((epoch, epochs, steps));
    }
    fn on_batch_end(&mut self, progress: &BatchProgress) {
        self.batches.push(*progress);
    }
    fn on_validation_begin(&mut self) {
        self.validations += 1;
    }
    fn on_epoch_end(&mut self, logs: &EpochLogs) {
        self.ends.push(*logs);
    }
}

#[test]
fn linear_model_learns_quadrants() {
    let train = quadrants(400, 1);
    let validation = quadrants(100, 2);
    let mut trainer = trainer(LINEAR, 7);
    let mut optimizer = Optimizer::new(sgd(0.1), &trainer.graph().params).unwrap();
    let config = FitConfig {
        epochs: 5,
        batch_size: 32,
        ..FitConfig::default()
    };
    let history = trainer
        .fit(&mut optimizer, &train, Some(&validation), &config, &mut ())
        .unwrap();
    assert_eq!(history.epochs.len(), 5);
    let losses: Vec<f64> = history.epochs.iter().map(|e| e.loss).collect();
    for pair in losses.windows(2) {
        assert!(
            pair[1] < pair[0],
            "training loss should fall every epoch: {losses:?}"
        );
    }
    // The first epoch starts near ln 4 = 1.386 (Glorot init, small logits).
    assert!(losses[0] < 4f64.ln() + 0.1);
    let last = history.epochs.last().unwrap();
    assert!(last.val_accuracy.unwrap() > 0.95, "{last:?}");
    assert!(last.val_loss.unwrap() < 0.5, "{last:?}");
    // 13 steps per epoch (ceil(400 / 32)), 5 epochs.
    assert_eq!(optimizer.iterations(), 65);
}

#[test]
fn callbacks_see_keras_running_means() {
    let train = quadrants(100, 3);
    let validation = quadrants(20, 4);
    let mut trainer = trainer(LINEAR, 1);
    let mut optimizer = Optimizer::new(sgd(0.05), &trainer.graph().params).unwrap();
    let config = FitConfig {
        epochs: 2,
        batch_size: 32,
        ..FitConfig::default()
    };
    let mut recorder = Recorder::default();
    let history = trainer
        .fit(
            &mut optimizer,
            &train,
            Some(&validation),
            &config,
            &mut recorder,
        )
        .unwrap();
    // ceil(100 / 32) = 4 steps: 32, 32, 32, 4.
    assert_eq!(recorder.epochs_begun, vec![(1, 2, 4), (2, 2, 4)]);
    assert_eq!(recorder.batches.len(), 8);
    assert_eq!(
        recorder
            .batches
            .iter()
            .map(|b| (b.epoch, b.step))
            .collect::<Vec<_>>(),
        vec![
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4)
        ]
    );
    assert_eq!(recorder.validations, 2);
    assert_eq!(recorder.ends, history.epochs);
    // The last step's running mean is the epoch's value.
    assert_eq!(recorder.batches[3].loss, history.epochs[0].loss);
    assert_eq!(recorder.batches[7].accuracy, history.epochs[1].accuracy);
    // Accuracy means are multiples of 1/100 (per-example mean over 100 examples).
    let hits = history.epochs[0].accuracy * 100.0;
    assert!((hits - hits.round()).abs() < 1e-9);
}

#[test]
fn fit_is_deterministic_for_a_seed() {
    let train = quadrants(200, 5);
    let validation = quadrants(50, 6);
    let run = |seed: u64| {
        let mut trainer = trainer(HIDDEN, seed);
        let mut optimizer = Optimizer::new(
            OptimizerConfig::Adam(AdamConfig::default()),
            &trainer.graph().params,
        )
        .unwrap();
        let config = FitConfig {
            epochs: 2,
            batch_size: 16,
            seed,
            ..FitConfig::default()
        };
        let history = trainer
            .fit(&mut optimizer, &train, Some(&validation), &config, &mut ())
            .unwrap();
        (
            history
                .epochs
                .iter()
                .map(|e| (e.loss, e.accuracy, e.val_loss))
                .collect::<Vec<_>>(),
            trainer.into_params(),
        )
    };
    let (a, params_a) = run(11);
    let (b, params_b) = run(11);
    let (c, _) = run(12);
    assert_eq!(a, b);
    assert_eq!(params_a.values, params_b.values);
    assert_ne!(a, c);
}

#[test]
fn zero_parameters_give_uniform_predictions() {
    // All-zero weights: logits 0, softmax 1/4 each, loss ln 4 for every
    // example; arg-max ties go to class 0, so accuracy = share of label 0.
    let (_, inference) = graphs(LINEAR);
    let params = ParamStore::zeros_like(&inference);
    let data = quadrants(64, 8);
    let mut classifier = Classifier::new(inference).unwrap();
    let evaluation = classifier.evaluate(&params, &data, 10).unwrap();
    assert!((evaluation.loss - 4f64.ln()).abs() < 1e-6, "{evaluation:?}");
    let zeros = data.labels.iter().filter(|&&l| l == 0).count();
    assert_eq!(evaluation.accuracy, zeros as f64 / 64.0);
    assert_eq!(evaluation.examples, 64);
    let probabilities = classifier.predict(&params, &data.images, 10).unwrap();
    assert_eq!(probabilities.shape(), &[64, 4]);
    assert!(probabilities.iter().all(|&p| (p - 0.25).abs() < 1e-7));
}

#[test]
fn predict_treats_a_model_without_softmax_as_logits() {
    // Same linear model, no final softmax: its output is logits (as in
    // training), so predict returns softmax(logits) = exp(z_k) / sum_j exp(z_j),
    // the probabilities whose -ln(p[y]) evaluate reports as the loss.
    let (_, inference) = graphs("model logits { input [4, 4, 1] flatten dense(4) }");
    let params = ParamStore::init(&inference, 5);
    let data = quadrants(6, 10);
    let mut full = cnnc_runtime::executor::Executor::new(inference.clone());
    let logits = full
        .try_forward(
            &params,
            &data.images,
            cnnc_runtime::executor::Mode::Inference,
        )
        .unwrap();
    let mut classifier = Classifier::new(inference).unwrap();
    let probabilities = classifier.predict(&params, &data.images, 4).unwrap();
    assert_eq!(probabilities.shape(), &[6, 4]);
    let mut loss = 0.0f64;
    for (i, (row, z)) in probabilities
        .outer_iter()
        .zip(logits.outer_iter())
        .enumerate()
    {
        let sum: f32 = z.iter().map(|v| v.exp()).sum();
        for (p, v) in row.iter().zip(z.iter()) {
            assert!(*p >= 0.0);
            assert!((p - v.exp() / sum).abs() < 1e-6, "{p} vs softmax of {v}");
        }
        assert!((row.sum() - 1.0).abs() < 1e-6);
        loss -= f64::from(row[data.labels[i]]).ln();
    }
    let evaluation = classifier.evaluate(&params, &data, 4).unwrap();
    assert!(
        (evaluation.loss - loss / 6.0).abs() < 1e-5,
        "{evaluation:?} vs {loss}"
    );
}

#[test]
fn classifier_cuts_the_softmax_and_predict_restores_it() {
    let (_, inference) = graphs(LINEAR);
    assert!(matches!(inference.node(inference.output).op, Op::Softmax));
    let mut classifier = Classifier::new(inference.clone()).unwrap();
    let graph = classifier.graph();
    assert!(!matches!(graph.node(graph.output).op, Op::Softmax));
    assert_eq!(graph.nodes.len(), inference.nodes.len() - 1);
    assert_eq!(classifier.classes(), 4);

    // Random parameters: predict equals the full inference graph's output.
    let params = ParamStore::init(&inference, 3);
    let data = quadrants(10, 9);
    let probabilities = classifier.predict(&params, &data.images, 4).unwrap();
    let mut full = cnnc_runtime::executor::Executor::new(inference);
    let expected = full
        .try_forward(
            &params,
            &data.images,
            cnnc_runtime::executor::Mode::Inference,
        )
        .unwrap();
    for (p, e) in probabilities.iter().zip(expected.iter()) {
        assert!((p - e).abs() < 1e-6);
    }
    // Evaluation from logits agrees with Keras's probability form here
    // (no probability is below 1e-7).
    let evaluation = classifier.evaluate(&params, &data, 4).unwrap();
    let keras = cnnc_runtime::loss::sparse_categorical_crossentropy_from_probabilities(
        &expected,
        &data.labels,
    )
    .unwrap();
    assert!((evaluation.loss - f64::from(keras)).abs() < 1e-5);
}

#[test]
fn frozen_parameters_stay_put() {
    let (mut training, mut inference) = graphs(LINEAR);
    // Freeze the kernel, train only the bias.
    for graph in [&mut training, &mut inference] {
        let kernel = graph
            .params
            .iter_mut()
            .find(|p| p.name.ends_with("/kernel"))
            .unwrap();
        kernel.trainable = false;
    }
    let kernel_index = training.params.iter().position(|p| !p.trainable).unwrap();
    let params = ParamStore::init(&training, 5);
    let before = params.values.clone();
    let mut trainer = Trainer::new(training, inference, params).unwrap();
    let mut optimizer = Optimizer::new(sgd(0.1), &trainer.graph().params).unwrap();
    let config = FitConfig {
        epochs: 1,
        batch_size: 8,
        ..FitConfig::default()
    };
    trainer
        .fit(&mut optimizer, &quadrants(40, 1), None, &config, &mut ())
        .unwrap();
    let after = &trainer.params().values;
    assert_eq!(after[kernel_index], before[kernel_index]);
    assert_ne!(after[1 - kernel_index], before[1 - kernel_index]);
}

#[test]
fn wrong_input_shape_is_an_error() {
    let mut trainer = trainer(LINEAR, 1);
    let mut optimizer = Optimizer::new(sgd(0.1), &trainer.graph().params).unwrap();
    let images = Tensor::zeros(IxDyn(&[3, 5, 5, 1]));
    let data = Dataset::new(images, vec![0, 1, 2]).unwrap();
    let err = trainer
        .fit(&mut optimizer, &data, None, &FitConfig::default(), &mut ())
        .unwrap_err();
    assert!(
        matches!(&err, TrainError::InputShape { expected, found } if expected == &[4, 4, 1] && found == &[5, 5, 1]),
        "{err}"
    );
    assert!(matches!(
        trainer.evaluate(&data, 8),
        Err(TrainError::InputShape { .. })
    ));
}

#[test]
fn labels_beyond_the_classes_are_an_error() {
    let mut trainer = trainer(LINEAR, 1);
    let mut optimizer = Optimizer::new(sgd(0.1), &trainer.graph().params).unwrap();
    let data = Dataset::new(Tensor::zeros(IxDyn(&[2, 4, 4, 1])), vec![0, 4]).unwrap();
    let err = trainer
        .fit(&mut optimizer, &data, None, &FitConfig::default(), &mut ())
        .unwrap_err();
    assert!(matches!(err, TrainError::Loss(_)), "{err}");
}

#[test]
fn non_finite_loss_stops_training() {
    // A NaN pixel makes every logit of its example NaN, hence the loss.
    let mut trainer = trainer(LINEAR, 1);
    let mut optimizer = Optimizer::new(sgd(0.1), &trainer.graph().params).unwrap();
    let mut data = quadrants(40, 1);
    data.images[[13, 2, 2, 0]] = f32::NAN;
    let fit = FitConfig {
        epochs: 1,
        batch_size: 8,
        shuffle: false,
        ..FitConfig::default()
    };
    let err = trainer
        .fit(&mut optimizer, &data, None, &fit, &mut ())
        .unwrap_err();
    // Example 13 is in the second batch of 8.
    assert!(
        matches!(
            err,
            TrainError::NonFiniteLoss {
                epoch: 1,
                step: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("learning_rate"));
}

#[test]
fn continuing_with_initial_epoch_equals_one_longer_fit() {
    // Keras's `fit(initial_epoch=1, epochs=3)` after `fit(epochs=1)` with the
    // same optimizer is the same training as `fit(epochs=3)`: the same
    // shuffles (by epoch index), dropout masks (by step) and updates, so
    // the parameters come out bit-identical.
    let train = quadrants(120, 11);
    let run = |split: bool| {
        let mut trainer = trainer(HIDDEN, 5);
        let mut optimizer = Optimizer::new(sgd(0.05), &trainer.graph().params).unwrap();
        let mut recorder = Recorder::default();
        let config = |initial_epoch, epochs| FitConfig {
            initial_epoch,
            epochs,
            batch_size: 16,
            ..FitConfig::default()
        };
        if split {
            let first = trainer
                .fit(&mut optimizer, &train, None, &config(0, 1), &mut recorder)
                .unwrap();
            let rest = trainer
                .fit(&mut optimizer, &train, None, &config(1, 3), &mut recorder)
                .unwrap();
            assert_eq!(first.epochs.len(), 1);
            // The continuation numbers its epochs 2 and 3, of 3.
            assert_eq!(
                rest.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
                [2, 3]
            );
        } else {
            trainer
                .fit(&mut optimizer, &train, None, &config(0, 3), &mut recorder)
                .unwrap();
        }
        let begun: Vec<(usize, usize)> = recorder
            .epochs_begun
            .iter()
            .map(|&(e, of, _)| (e, of))
            .collect();
        (trainer.into_params().values, begun)
    };
    let (whole, whole_epochs) = run(false);
    let (split, split_epochs) = run(true);
    assert_eq!(whole_epochs, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(split_epochs, [(1, 1), (2, 3), (3, 3)]);
    assert_eq!(whole, split);
}
