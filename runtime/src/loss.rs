//! Losses. Only `sparse_categorical_crossentropy` (integer class labels),
//! computed from logits for numerical stability.

use crate::tensor::Tensor;
use ndarray::{Axis, Ix2};

/// An error in the inputs of a loss.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossError {
    /// The predictions are not `[batch, classes]`.
    #[error("the loss expects [batch, classes] predictions, got shape {shape:?}")]
    NotTwoDimensional { shape: Vec<usize> },
    /// The number of labels differs from the batch size.
    #[error("{labels} labels for a batch of {batch} predictions")]
    BatchMismatch { batch: usize, labels: usize },
    /// A label is not a valid class index.
    #[error("label {label} (example {index}) is out of range for {classes} classes")]
    LabelOutOfRange {
        index: usize,
        label: usize,
        classes: usize,
    },
}

/// Keras's `epsilon()` (1e-7): probabilities are clipped to `[eps, 1 - eps]`
/// before taking logs in [`sparse_categorical_crossentropy_from_probabilities`].
pub const PROBABILITY_EPSILON: f32 = 1e-7;

/// The loss value and its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct LossAndGradient {
    /// Mean loss over the batch.
    pub loss: f32,
    /// d loss / d logits, `[batch, classes]`.
    pub grad_logits: Tensor,
}

fn check<'a>(
    predictions: &'a Tensor,
    labels: &[usize],
) -> Result<ndarray::ArrayView2<'a, f32>, LossError> {
    let view = predictions
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| LossError::NotTwoDimensional {
            shape: predictions.shape().to_vec(),
        })?;
    let (batch, classes) = view.dim();
    if batch != labels.len() {
        return Err(LossError::BatchMismatch {
            batch,
            labels: labels.len(),
        });
    }
    if let Some(index) = labels.iter().position(|&l| l >= classes) {
        return Err(LossError::LabelOutOfRange {
            index,
            label: labels[index],
            classes,
        });
    }
    Ok(view)
}

/// Per-example sparse categorical cross-entropy from logits `z` (`[batch, classes]`):
///
/// `loss_i = -log softmax(z_i)[y_i] = log(sum_j exp(z_ij - m_i)) - (z_i,y_i - m_i)`,
/// `m_i = max_j z_ij` (the log-sum-exp trick). Subtracting the max before
/// anything else keeps every `exp` in `(0, 1]` and keeps the difference exact
/// for huge logits: for `z = [1e8, 1e8]` the loss is `ln 2`, where
/// `lse(z) - z_y` in f32 would give 0.
pub fn crossentropy_per_example(logits: &Tensor, labels: &[usize]) -> Result<Vec<f32>, LossError> {
    let view = check(logits, labels)?;
    Ok(view
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(row, &label)| {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            sum.ln() - (row[label] - max)
        })
        .collect())
}

/// Sparse categorical cross-entropy from logits (Keras
/// `SparseCategoricalCrossentropy(from_logits=True)`, mean reduction).
///
/// `logits`: `[batch, classes]`; `labels`: one class index per example.
/// Returns the mean loss and `d loss / d logits = (softmax(z) - onehot(y)) / batch`.
pub fn sparse_categorical_crossentropy(
    logits: &Tensor,
    labels: &[usize],
) -> Result<LossAndGradient, LossError> {
    let per_example = crossentropy_per_example(logits, labels)?;
    let batch = labels.len();
    let mut grad = softmax(logits).expect("checked two-dimensional above");
    let scale = 1.0 / batch.max(1) as f32;
    for (mut row, &label) in grad.axis_iter_mut(Axis(0)).zip(labels) {
        row[label] -= 1.0;
        row.mapv_inplace(|g| g * scale);
    }
    let loss = per_example.iter().map(|&l| f64::from(l)).sum::<f64>() / batch.max(1) as f64;
    Ok(LossAndGradient {
        loss: loss as f32,
        grad_logits: grad,
    })
}

/// Sparse categorical cross-entropy from probabilities, as Keras computes it
/// when the model ends in softmax (`from_logits=False`): probabilities clipped
/// to `[1e-7, 1 - 1e-7]`, then `-log p[y]`, averaged. Less accurate than the
/// logits form for confident wrong answers (the loss saturates at
/// `-ln 1e-7 = 16.12`); provided for parity checks with Keras.
pub fn sparse_categorical_crossentropy_from_probabilities(
    probabilities: &Tensor,
    labels: &[usize],
) -> Result<f32, LossError> {
    let view = check(probabilities, labels)?;
    let total: f64 = view
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(row, &label)| {
            let p = row[label].clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON);
            -f64::from(p.ln())
        })
        .sum();
    Ok((total / labels.len().max(1) as f64) as f32)
}

/// Softmax over the last axis of `[batch, classes]` logits, with the max
/// subtracted first (`exp(z - m) / sum exp(z - m)`).
pub fn softmax(logits: &Tensor) -> Result<Tensor, LossError> {
    let mut out =
        logits
            .clone()
            .into_dimensionality::<Ix2>()
            .map_err(|_| LossError::NotTwoDimensional {
                shape: logits.shape().to_vec(),
            })?;
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    Ok(out.into_dyn())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn t(rows: usize, cols: usize, data: &[f32]) -> Tensor {
        Tensor::from_shape_vec(IxDyn(&[rows, cols]), data.to_vec()).unwrap()
    }

    #[test]
    fn huge_equal_logits_give_ln_2() {
        let out = sparse_categorical_crossentropy(&t(1, 2, &[1e8, 1e8]), &[0]).unwrap();
        assert!(
            (out.loss - std::f32::consts::LN_2).abs() < 1e-6,
            "{}",
            out.loss
        );
        // Gradient: softmax = [0.5, 0.5], minus onehot [1, 0].
        assert_eq!(
            out.grad_logits.iter().copied().collect::<Vec<_>>(),
            vec![-0.5, 0.5]
        );
    }

    #[test]
    fn huge_logit_gap_gives_the_gap() {
        // z = [0, 1000], y = 0: loss = log(1 + e^1000) ~= 1000, no inf, no NaN.
        let out = sparse_categorical_crossentropy(&t(1, 2, &[0.0, 1000.0]), &[0]).unwrap();
        assert!((out.loss - 1000.0).abs() < 1e-3, "{}", out.loss);
        assert_eq!(
            out.grad_logits.iter().copied().collect::<Vec<_>>(),
            vec![-1.0, 1.0]
        );
        // Correct class far ahead: loss log(1 + e^-1000) = e^-1000 -> 0, not NaN.
        let out = sparse_categorical_crossentropy(&t(1, 2, &[0.0, 1000.0]), &[1]).unwrap();
        assert_eq!(out.loss, 0.0);
    }

    #[test]
    fn hand_computed_batch() {
        // Row 0: z = [0, ln 3] -> softmax [1/4, 3/4]; y = 1: loss ln(4/3).
        // Row 1: z = [2, 2] -> softmax [1/2, 1/2]; y = 0: loss ln 2.
        let logits = t(2, 2, &[0.0, 3f32.ln(), 2.0, 2.0]);
        let out = sparse_categorical_crossentropy(&logits, &[1, 0]).unwrap();
        let expected = ((4.0f64 / 3.0).ln() + 2f64.ln()) / 2.0;
        assert!((f64::from(out.loss) - expected).abs() < 1e-6);
        // Gradient / batch of 2: row 0 = [1/4, 3/4 - 1] / 2; row 1 = [1/2 - 1, 1/2] / 2.
        let g: Vec<f32> = out.grad_logits.iter().copied().collect();
        let e = [0.125, -0.125, -0.25, 0.25];
        for (a, b) in g.iter().zip(e) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn uniform_logits_over_ten_classes_give_ln_10() {
        let out = sparse_categorical_crossentropy(&t(1, 10, &[0.3; 10]), &[7]).unwrap();
        assert!((out.loss - 10f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let data = [
            0.3, -1.2, 2.0, 0.5, 0.1, 0.0, -0.7, 1.5, -2.2, 0.9, 0.4, -0.1,
        ];
        let logits = t(3, 4, &data);
        let labels = [2, 0, 3];
        let analytic = sparse_categorical_crossentropy(&logits, &labels)
            .unwrap()
            .grad_logits;
        // Central differences of the mean loss (f32; h = 1e-2 keeps rounding
        // error well under the tolerance, truncation error is O(h^2)).
        let h = 1e-2f32;
        for i in 0..data.len() {
            let mut plus = data;
            plus[i] += h;
            let mut minus = data;
            minus[i] -= h;
            let lp = sparse_categorical_crossentropy(&t(3, 4, &plus), &labels)
                .unwrap()
                .loss;
            let lm = sparse_categorical_crossentropy(&t(3, 4, &minus), &labels)
                .unwrap()
                .loss;
            let numeric = (lp - lm) / (2.0 * h);
            let a = analytic.as_slice().unwrap()[i];
            assert!(
                (a - numeric).abs() < 1e-3,
                "index {i}: analytic {a}, numeric {numeric}"
            );
        }
    }

    #[test]
    fn probability_form_clips_like_keras() {
        // p[y] = 0 is clipped to 1e-7: loss = -ln(1e-7) = 16.118...
        let loss = sparse_categorical_crossentropy_from_probabilities(&t(1, 2, &[1.0, 0.0]), &[1])
            .unwrap();
        assert!((loss - 16.118_095).abs() < 1e-3, "{loss}");
        let loss =
            sparse_categorical_crossentropy_from_probabilities(&t(1, 2, &[0.25, 0.75]), &[1])
                .unwrap();
        assert!((loss - (4.0f32 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            sparse_categorical_crossentropy(&t(1, 2, &[0.0, 0.0]), &[2]),
            Err(LossError::LabelOutOfRange {
                label: 2,
                classes: 2,
                ..
            })
        ));
        assert!(matches!(
            sparse_categorical_crossentropy(&t(1, 2, &[0.0, 0.0]), &[0, 1]),
            Err(LossError::BatchMismatch {
                batch: 1,
                labels: 2
            })
        ));
        let three_d = Tensor::zeros(IxDyn(&[1, 2, 2]));
        assert!(matches!(
            sparse_categorical_crossentropy(&three_d, &[0]),
            Err(LossError::NotTwoDimensional { .. })
        ));
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let p = softmax(&t(2, 3, &[1.0, 2.0, 3.0, 1e4, 0.0, -1e4])).unwrap();
        for row in p.axis_iter(Axis(0)) {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
        // e^1 / (e^1 + e^2 + e^3).
        let e = 1f32.exp() / (1f32.exp() + 2f32.exp() + 3f32.exp());
        assert!((p[[0, 0]] - e).abs() < 1e-6);
        assert_eq!(p[[1, 0]], 1.0);
    }
}
