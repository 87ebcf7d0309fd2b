//! Mini-batches: a seeded shuffle per epoch and background assembly of the
//! next batch while the current one trains (the `prefetch(1)` of `tf.data`).

use super::dataset::Dataset;
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::sync_channel;

/// One mini-batch: images `[batch, height, width, channels]` and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<usize>,
}

impl Batch {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How many batches built ahead of the one training (a bounded channel).
pub const PREFETCH: usize = 1;

/// Derives an independent 64-bit seed from `seed` and a stream number
/// (epoch, step, ...), with SplitMix64's finaliser (Steele, Lea & Flood 2014)
/// so that nearby inputs give unrelated outputs.
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    fn splitmix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix64(seed ^ splitmix64(stream))
}

/// The order in which an epoch visits the examples `0..len`: a Fisher-Yates
/// shuffle with a ChaCha8 generator seeded by `mix_seed(seed, epoch)` (so every
/// epoch differs, and a run is reproducible), or `0..len` when `shuffle` is off.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64));
        order.shuffle(&mut rng);
    }
    order
}

/// Number of batches of `batch_size` (> 0) for `len` examples; the last,
/// partial batch counts (Keras keeps it).
pub fn batch_count(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size.max(1))
}

/// Calls `train_step(index, batch)` for the batches of `order` in turn, each of
/// `batch_size` examples (the last may be smaller). The next batch is gathered
/// on a background thread while `train_step` runs. Stops at the first error
/// and returns it.
pub fn for_each_batch<E>(
    data: &Dataset,
    order: &[usize],
    batch_size: usize,
    mut train_step: impl FnMut(usize, Batch) -> Result<(), E>,
) -> Result<(), E> {
    let batch_size = batch_size.max(1);
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Batch>(PREFETCH);
        scope.spawn(move || {
            for chunk in order.chunks(batch_size) {
                let (images, labels) = data.gather(chunk);
                if sender.send(Batch { images, labels }).is_err() {
                    // The consumer stopped early (an error); nothing more to do.
                    return;
                }
            }
        });
        let mut index = 0;
        while let Ok(batch) = receiver.recv() {
            if let Err(err) = train_step(index, batch) {
                // Dropping the receiver unblocks the producer's `send`.
                drop(receiver);
                return Err(err);
            }
            index += 1;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn data(n: usize) -> Dataset {
        let images =
            Tensor::from_shape_vec(IxDyn(&[n, 1, 1, 1]), (0..n).map(|i| i as f32).collect())
                .unwrap();
        Dataset::new(images, (0..n).collect()).unwrap()
    }

    #[test]
    fn order_is_a_seeded_permutation_that_changes_each_epoch() {
        let a = epoch_order(100, 42, 0, true);
        let b = epoch_order(100, 42, 0, true);
        let c = epoch_order(100, 42, 1, true);
        let d = epoch_order(100, 43, 0, true);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 42, 3, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batch_count_keeps_the_partial_batch() {
        // The book: 55,000 / 32 = 1718.75 -> 1719 steps per epoch.
        assert_eq!(batch_count(55_000, 32), 1719);
        assert_eq!(batch_count(64, 32), 2);
        assert_eq!(batch_count(0, 32), 0);
    }

    #[test]
    fn batches_cover_the_order_with_a_partial_last_batch() {
        let data = data(10);
        let order = epoch_order(10, 7, 0, true);
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for_each_batch::<()>(&data, &order, 4, |index, batch| {
            assert_eq!(index, sizes.len());
            sizes.push(batch.len());
            assert_eq!(batch.images.shape(), &[batch.len(), 1, 1, 1]);
            for (k, &label) in batch.labels.iter().enumerate() {
                // Pixel value i belongs to label i.
                assert_eq!(batch.images[[k, 0, 0, 0]], label as f32);
            }
            seen.extend(batch.labels);
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(seen, order);
    }

    #[test]
    fn an_error_stops_the_loop_without_hanging() {
        let data = data(100);
        let order = epoch_order(100, 1, 0, false);
        let mut calls = 0;
        let result = for_each_batch(&data, &order, 3, |index, _| {
            calls += 1;
            if index == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("stop"));
        assert_eq!(calls, 3);
    }

    #[test]
    fn mixed_seeds_differ() {
        assert_ne!(mix_seed(42, 0), mix_seed(42, 1));
        assert_ne!(mix_seed(42, 0), mix_seed(43, 0));
        assert_eq!(mix_seed(42, 5), mix_seed(42, 5));
    }
}
