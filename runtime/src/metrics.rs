//! Metrics: accuracy and the running (batch-size-weighted) mean Keras shows
//! in its progress bar.

use crate::tensor::Tensor;
use ndarray::{Axis, Ix2};

/// Number of rows of `scores` (`[batch, classes]`, logits or probabilities)
/// whose arg-max equals the label (Keras `sparse_categorical_accuracy`; ties
/// go to the lowest index, as `argmax` does). Returns 0 for a tensor that is
/// not two-dimensional or a batch that does not match `labels`.
pub fn correct_count(scores: &Tensor, labels: &[usize]) -> usize {
    let Ok(view) = scores.view().into_dimensionality::<Ix2>() else {
        return 0;
    };
    view.axis_iter(Axis(0))
        .zip(labels)
        .filter(|(row, &label)| argmax(row.iter().copied()) == Some(label))
        .count()
}

/// Fraction of correct predictions (see [`correct_count`]); 0 for an empty batch.
pub fn accuracy(scores: &Tensor, labels: &[usize]) -> f32 {
    if labels.is_empty() {
        return 0.0;
    }
    correct_count(scores, labels) as f32 / labels.len() as f32
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(values: impl IntoIterator<Item = f32>) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.into_iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// A weighted running mean, `sum(w_i x_i) / sum(w_i)`. Keras's `Mean` metric
/// updated once per batch with `sample_weight = batch size`, so the epoch loss
/// and accuracy are per-example means even with a partial last batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunningMean {
    total: f64,
    weight: f64,
}

impl RunningMean {
    pub fn new() -> RunningMean {
        RunningMean::default()
    }

    /// Adds `value` with weight `weight` (the batch size).
    pub fn add(&mut self, value: f64, weight: f64) {
        self.total += value * weight;
        self.weight += weight;
    }

    /// The mean so far (0 before anything was added).
    pub fn mean(&self) -> f64 {
        if self.weight == 0.0 {
            0.0
        } else {
            self.total / self.weight
        }
    }

    /// The total weight added (number of examples).
    pub fn weight(&self) -> f64 {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn accuracy_counts_argmax_hits() {
        let scores = Tensor::from_shape_vec(
            IxDyn(&[4, 3]),
            vec![0.1, 0.7, 0.2, 0.9, 0.05, 0.05, 0.3, 0.3, 0.4, 0.5, 0.5, 0.0],
        )
        .unwrap();
        // Argmaxes: 1, 0, 2, 0 (tie -> first).
        assert_eq!(correct_count(&scores, &[1, 0, 1, 0]), 3);
        assert_eq!(accuracy(&scores, &[1, 0, 1, 0]), 0.75);
        assert_eq!(accuracy(&scores, &[]), 0.0);
    }

    #[test]
    fn argmax_skips_nan() {
        assert_eq!(argmax([f32::NAN, 1.0, 3.0, 3.0]), Some(2));
        assert_eq!(argmax([f32::NAN]), None);
        assert_eq!(argmax([]), None);
    }

    #[test]
    fn running_mean_weights_by_batch_size() {
        let mut mean = RunningMean::new();
        assert_eq!(mean.mean(), 0.0);
        // Two full batches of 32 with losses 1.0 and 0.5, then a batch of 16 at 0.25:
        // (32 + 16 + 4) / 80 = 0.65.
        mean.add(1.0, 32.0);
        mean.add(0.5, 32.0);
        assert_eq!(mean.mean(), 0.75);
        mean.add(0.25, 16.0);
        assert!((mean.mean() - 0.65).abs() < 1e-12);
        assert_eq!(mean.weight(), 80.0);
    }
}
