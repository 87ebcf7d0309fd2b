//! An in-memory labelled data set and the validation split.

use super::error::DataError;
use super::idx;
use crate::tensor::Tensor;
use ndarray::{Axis, IxDyn};
use std::path::Path;

/// Images and their class labels, held in memory.
///
/// `images` is `[n, height, width, channels]` (NHWC, f32 in `[0, 1]` for IDX
/// data); `labels[i]` is the class index of image `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Vec<usize>,
}

/// How many of the training examples to hold out for validation. As Keras's
/// `validation_split` and the book (`X_train[:-5000]`, `X_valid = X_train[-5000:]`),
/// the held-out examples are the **last** ones, taken before any shuffling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValidationSplit {
    /// The last `n` examples.
    Count(usize),
    /// A fraction in `[0, 1)`: the training part keeps
    /// `floor(n * (1 - fraction))` examples, as Keras's `validation_split`.
    Fraction(f64),
}

impl Default for ValidationSplit {
    /// 5,000 examples, the book's Fashion-MNIST setup.
    fn default() -> Self {
        ValidationSplit::Count(5_000)
    }
}

impl ValidationSplit {
    /// The number of validation examples out of `total`.
    pub fn count(self, total: usize) -> Result<usize, DataError> {
        let count = match self {
            ValidationSplit::Count(n) => n,
            ValidationSplit::Fraction(f) => {
                if !(0.0..1.0).contains(&f) || f.is_nan() {
                    return Err(DataError::BadFraction(f));
                }
                let train = (total as f64 * (1.0 - f)).floor() as usize;
                total - train.min(total)
            }
        };
        if count >= total && count > 0 {
            return Err(DataError::SplitTooLarge {
                requested: count,
                available: total,
            });
        }
        Ok(count)
    }
}

impl Dataset {
    /// Builds a data set; the number of images (first axis) must equal the
    /// number of labels.
    pub fn new(images: Tensor, labels: Vec<usize>) -> Result<Dataset, DataError> {
        let n = images.shape().first().copied().unwrap_or(0);
        if n != labels.len() {
            return Err(DataError::CountMismatch {
                images_path: "<images>".into(),
                images: n,
                labels_path: "<labels>".into(),
                labels: labels.len(),
            });
        }
        Ok(Dataset { images, labels })
    }

    /// Reads an IDX image file and its IDX label file (each raw or gzip) and
    /// checks that they hold the same number of examples.
    pub fn load_idx(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
        let images = idx::read_images(images_path)?;
        let labels = idx::read_labels(labels_path)?;
        let n = images.shape()[0];
        if n != labels.len() {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: n,
                labels_path: labels_path.to_path_buf(),
                labels: labels.len(),
            });
        }
        Ok(Dataset { images, labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Per-example shape (`[height, width, channels]`).
    pub fn example_shape(&self) -> &[usize] {
        &self.images.shape()[1..]
    }

    /// Checks every label is below `classes`; `path` names the label file in the error.
    pub fn check_labels(&self, classes: usize, path: &Path) -> Result<(), DataError> {
        match self.labels.iter().position(|&l| l >= classes) {
            Some(index) => Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label: self.labels[index],
                classes,
            }),
            None => Ok(()),
        }
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images.slice_axis(Axis(0), (0..n).into()).to_owned(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// Splits off the validation examples (the last ones, see
    /// [`ValidationSplit`]); returns `(train, validation)`.
    pub fn split_validation(self, split: ValidationSplit) -> Result<(Dataset, Dataset), DataError> {
        let count = split.count(self.len())?;
        let at = self.len() - count;
        let train = Dataset {
            images: self.images.slice_axis(Axis(0), (0..at).into()).to_owned(),
            labels: self.labels[..at].to_vec(),
        };
        let validation = Dataset {
            images: self.images.slice_axis(Axis(0), (at..).into()).to_owned(),
            labels: self.labels[at..].to_vec(),
        };
        Ok((train, validation))
    }

    /// Copies the examples at `indices` (each below [`Dataset::len`]) into a
    /// batch: images `[indices.len(), height, width, channels]` and labels.
    pub fn gather(&self, indices: &[usize]) -> (Tensor, Vec<usize>) {
        let example_len: usize = self.example_shape().iter().product();
        let source = self
            .images
            .as_slice()
            .map(std::borrow::Cow::Borrowed)
            .unwrap_or_else(|| std::borrow::Cow::Owned(self.images.iter().copied().collect()));
        let mut data = Vec::with_capacity(indices.len() * example_len);
        for &i in indices {
            data.extend_from_slice(&source[i * example_len..(i + 1) * example_len]);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(self.example_shape());
        let images = Tensor::from_shape_vec(IxDyn(&shape), data)
            .expect("gather builds exactly len * example_len values");
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (images, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 examples of 1 x 2 x 1 whose pixels are `[i, -i]`, label `i % 3`.
    fn ten() -> Dataset {
        let data: Vec<f32> = (0..10).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let images = Tensor::from_shape_vec(IxDyn(&[10, 1, 2, 1]), data).unwrap();
        Dataset::new(images, (0..10).map(|i| i % 3).collect()).unwrap()
    }

    #[test]
    fn count_split_takes_the_last_examples() {
        let (train, val) = ten().split_validation(ValidationSplit::Count(3)).unwrap();
        assert_eq!(train.len(), 7);
        assert_eq!(val.len(), 3);
        assert_eq!(val.images[[0, 0, 0, 0]], 7.0);
        assert_eq!(val.labels, vec![7 % 3, 8 % 3, 9 % 3]);
        assert_eq!(train.images[[6, 0, 1, 0]], -6.0);
    }

    #[test]
    fn fraction_split_follows_keras_rounding() {
        // Keras: split_at = floor(10 * (1 - 0.25)) = 7, so 3 for validation.
        assert_eq!(ValidationSplit::Fraction(0.25).count(10).unwrap(), 3);
        // floor(60000 * 0.9) = 54000 -> 6000.
        assert_eq!(ValidationSplit::Fraction(0.1).count(60_000).unwrap(), 6_000);
        assert_eq!(ValidationSplit::Fraction(0.0).count(10).unwrap(), 0);
        assert!(matches!(
            ValidationSplit::Fraction(1.0).count(10),
            Err(DataError::BadFraction(_))
        ));
        assert!(matches!(
            ValidationSplit::Fraction(-0.1).count(10),
            Err(DataError::BadFraction(_))
        ));
    }

    #[test]
    fn split_of_everything_is_an_error() {
        assert!(matches!(
            ten().split_validation(ValidationSplit::Count(10)),
            Err(DataError::SplitTooLarge {
                requested: 10,
                available: 10
            })
        ));
        let (train, val) = ten().split_validation(ValidationSplit::Count(0)).unwrap();
        assert_eq!((train.len(), val.len()), (10, 0));
    }

    #[test]
    fn gather_copies_examples_in_order() {
        let (images, labels) = ten().gather(&[4, 1, 9]);
        assert_eq!(images.shape(), &[3, 1, 2, 1]);
        let values: Vec<f32> = images.iter().copied().collect();
        assert_eq!(values, vec![4.0, -4.0, 1.0, -1.0, 9.0, -9.0]);
        assert_eq!(labels, vec![1, 1, 0]);
    }

    #[test]
    fn label_check_reports_first_bad_label() {
        let data = ten();
        assert!(data.check_labels(3, Path::new("l")).is_ok());
        let err = data.check_labels(2, Path::new("labels.idx")).unwrap_err();
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 2,
                label: 2,
                classes: 2,
                ..
            }
        ));
    }

    #[test]
    fn take_keeps_the_first_examples() {
        let data = ten().take(2);
        assert_eq!(data.labels, vec![0, 1]);
        assert_eq!(ten().take(50).len(), 10);
    }
}
