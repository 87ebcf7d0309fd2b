//! The shipped Fashion-MNIST sample (data/fashion-mnist-sample/) read through
//! the IDX reader, the validation split and the batcher.

use cnnc_runtime::data::{self, for_each_batch, Dataset, ValidationSplit};
use std::path::{Path, PathBuf};

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-sample")
}

fn load(prefix: &str) -> Dataset {
    let dir = sample_dir();
    Dataset::load_idx(
        &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
    )
    .unwrap()
}

#[test]
fn sample_has_the_documented_sizes_and_ranges() {
    let train = load("train");
    let test = load("t10k");
    assert_eq!(train.images.shape(), &[4000, 28, 28, 1]);
    assert_eq!(test.images.shape(), &[1000, 28, 28, 1]);
    for set in [&train, &test] {
        assert!(set.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
        // Every pixel is k / 255 for an integer k.
        assert!(set
            .images
            .iter()
            .all(|&p| ((p * 255.0) - (p * 255.0).round()).abs() < 1e-4));
        let mut per_class = [0usize; 10];
        for &label in &set.labels {
            per_class[label] += 1;
        }
        // Shuffled data: every class is present in reasonable numbers.
        let expected = set.len() / 10;
        assert!(per_class.iter().all(|&c| c > expected / 2), "{per_class:?}");
        assert!(set.check_labels(10, Path::new("labels")).is_ok());
    }
}

#[test]
fn sample_is_the_head_of_the_full_data_set() {
    // The full data lives outside the repository; skip when it is absent.
    let full_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/fashion-mnist");
    let full_labels = full_dir.join("t10k-labels-idx1-ubyte.gz");
    if !full_labels.exists() {
        eprintln!("skipped: {} not found", full_labels.display());
        return;
    }
    let full = data::idx::read_labels(&full_labels).unwrap();
    let sample = load("t10k");
    assert_eq!(sample.labels[..], full[..1000]);
    let full_images = data::idx::read_images(&full_dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(full_images.shape(), &[10_000, 28, 28, 1]);
    let head = full_images.slice_axis(ndarray::Axis(0), (0..1000).into());
    assert_eq!(head, sample.images);
}

#[test]
fn book_split_and_batches_on_the_sample() {
    let train = load("train");
    let last_label = *train.labels.last().unwrap();
    let (train, validation) = train.split_validation(ValidationSplit::Count(500)).unwrap();
    assert_eq!((train.len(), validation.len()), (3500, 500));
    assert_eq!(*validation.labels.last().unwrap(), last_label);

    // One epoch of batches of 32: ceil(3500 / 32) = 110 batches, the last of 12.
    let order = data::epoch_order(train.len(), 42, 0, true);
    let mut sizes = Vec::new();
    for_each_batch::<()>(&train, &order, 32, |_, batch| {
        assert_eq!(&batch.images.shape()[1..], &[28, 28, 1]);
        sizes.push(batch.len());
        Ok(())
    })
    .unwrap();
    assert_eq!(sizes.len(), 110);
    assert_eq!(*sizes.last().unwrap(), 3500 - 109 * 32);
    assert_eq!(sizes.iter().sum::<usize>(), 3500);
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = sample_dir();
    let err = Dataset::load_idx(
        &dir.join("train-images-idx3-ubyte.gz"),
        &dir.join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            data::DataError::CountMismatch {
                images: 4000,
                labels: 1000,
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("train-images-idx3-ubyte.gz")
            && message.contains("t10k-labels-idx1-ubyte.gz")
    );
}

#[test]
fn swapped_files_are_reported_by_magic_number() {
    let dir = sample_dir();
    let err = Dataset::load_idx(
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        &dir.join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            data::DataError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err}"
    );
}
