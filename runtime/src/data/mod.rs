//! Data loading: IDX files (MNIST / Fashion-MNIST, raw or gzip), PNG images,
//! the validation split, and mini-batches assembled on a background thread.
//!
//! Images are f32 NHWC (`[n, height, width, channels]`) with pixels in `[0, 1]`;
//! labels are class indices.

pub mod batch;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod idx;
pub mod image;
pub mod transform;

pub use batch::{batch_count, epoch_order, for_each_batch, mix_seed, Batch};
pub use dataset::{Dataset, ValidationSplit};
pub use error::DataError;
